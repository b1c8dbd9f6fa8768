//! Executing an NVM command: the block range against the disk and what
//! each opcode does to it.

use super::*;

impl State {
    pub(super) fn execute(&mut self, qid: u16, cmd: &Cmd) -> Status {
        let sqe = cmd.sqe;
        let mut record = CommandRecord {
            qid,
            cid: sqe.cid(),
            opcode: sqe.opcode,
            nsid: sqe.nsid.get(),
            slba: 0,
            blocks: 0,
            bytes: 0,
            data: DataPointer::None,
            status: Status::SUCCESS,
            rw_flags: hints_of(&sqe).0,
            dsm: hints_of(&sqe).1,
        };
        if is_block_command(sqe.opcode) {
            (record.slba, record.blocks) = block_range(&sqe);
        }
        let status = match cmd.fail {
            Some(status) => {
                self.stats.injected += 1;
                status
            }
            None => match self.run(&sqe, &mut record) {
                Ok(()) => Status::SUCCESS,
                Err(status) => status,
            },
        };
        record.status = status;
        self.commands.push(record);
        status
    }

    pub(super) fn disk_range(
        &self,
        nsid: u32,
        slba: u64,
        blocks: u64,
    ) -> std::result::Result<(usize, usize), Status> {
        let disk = self.disks.get(&nsid).ok_or(reject(
            StatusCodeType::Generic,
            generic::INVALID_NAMESPACE_OR_FORMAT,
        ))?;
        if slba.checked_add(blocks).is_none_or(|end| end > disk.blocks) {
            return Err(reject(StatusCodeType::Generic, generic::LBA_OUT_OF_RANGE));
        }
        let lba = u64::from(disk.lba_size);
        Ok(((slba * lba) as usize, (blocks * lba) as usize))
    }

    pub(super) fn run(
        &mut self,
        sqe: &Sqe,
        record: &mut CommandRecord,
    ) -> std::result::Result<(), Status> {
        let nsid = sqe.nsid.get();
        let op = NvmOpcode::from_raw(sqe.opcode);
        match op {
            Some(NvmOpcode::Flush) => {
                if nsid != u32::MAX && !self.disks.contains_key(&nsid) {
                    return Err(reject(
                        StatusCodeType::Generic,
                        generic::INVALID_NAMESPACE_OR_FORMAT,
                    ));
                }
                self.stats.flushes += 1;
                Ok(())
            }
            Some(NvmOpcode::Read | NvmOpcode::Write) => {
                let (slba, blocks) = block_range(sqe);
                let (at, len) = self.disk_range(nsid, slba, blocks)?;
                if len > self.max_transfer {
                    self.violation(format!(
                        "{len}-byte transfer exceeds the {}-byte MDTS",
                        self.max_transfer
                    ));
                    return Err(reject(StatusCodeType::Generic, generic::INVALID_FIELD));
                }
                let segments = self.data_segments(sqe, len, record)?;
                let write = op == Some(NvmOpcode::Write);
                self.transfer(nsid, at, &segments, write)?;
                record.bytes = len;
                self.stats.max_command_bytes = self.stats.max_command_bytes.max(len);
                if write {
                    self.stats.writes += 1;
                } else {
                    self.stats.reads += 1;
                }
                Ok(())
            }
            Some(NvmOpcode::WriteZeroes) => {
                let (slba, blocks) = block_range(sqe);
                let (at, len) = self.disk_range(nsid, slba, blocks)?;
                if let Some(d) = self.disks.get_mut(&nsid) {
                    d.data[at..at + len].fill(0);
                }
                self.stats.write_zeroes += 1;
                Ok(())
            }
            Some(NvmOpcode::DatasetManagement) => {
                let ranges = (sqe.cdw10.get() & 0xff) as usize + 1;
                let deallocate = sqe.cdw11.get() & 4 != 0;
                let segments = self.data_segments(sqe, ranges * 16, record)?;
                let mut raw = vec![0u8; ranges * 16];
                self.gather(&segments, &mut raw)?;
                let parsed: Vec<(u64, u64)> = raw
                    .chunks_exact(16)
                    .filter_map(|c| nvme_spec::DsmRange::read_from_bytes(c).ok())
                    .map(|r| (r.slba.get(), u64::from(r.length.get())))
                    .collect();
                for &(slba, blocks) in &parsed {
                    if blocks == 0 {
                        continue;
                    }
                    self.disk_range(nsid, slba, blocks)?;
                }
                if deallocate {
                    for (slba, blocks) in parsed {
                        if blocks == 0 {
                            continue;
                        }
                        let (at, len) = self.disk_range(nsid, slba, blocks)?;
                        if let Some(d) = self.disks.get_mut(&nsid) {
                            d.data[at..at + len].fill(0);
                        }
                        self.deallocated.push((nsid, slba, blocks));
                    }
                }
                self.stats.dataset_management += 1;
                Ok(())
            }
            _ => Err(reject(StatusCodeType::Generic, generic::INVALID_OPCODE)),
        }
    }
}
