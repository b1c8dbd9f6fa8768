//! The admin queue: Identify, queue creation and deletion, Abort, features,
//! Doorbell Buffer Config, Asynchronous Event Requests.

use super::*;

impl State {
    pub(super) fn admin_doorbell(&mut self) -> Result<()> {
        if self.regs.pci_command & PCI_COMMAND_MASTER == 0 {
            // What a real controller does without bus mastering.
            self.violation("admin doorbell with bus mastering off".into());
            self.regs.csts |= CSTS_CFS;
            return Ok(());
        }
        if self.admin.is_none() {
            self.violation("admin doorbell while the controller is disabled".into());
            return Ok(());
        }
        if !self.serving() {
            return Ok(());
        }
        if !self.admin_latency.is_zero() {
            // The driver holds its admin lock meanwhile, as on a device.
            std::thread::sleep(self.admin_latency);
        }
        let tail = self.doorbell_value(0, false);
        let sq_entries = self.admin.as_ref().map_or(0, |a| a.sq_entries);
        if tail >= u32::from(sq_entries) {
            self.violation(format!("admin SQ tail doorbell {tail} past {sq_entries}"));
            return Ok(());
        }
        while let Some(a) = self.admin.as_mut() {
            if u32::from(a.sq_head) == tail {
                break;
            }
            let at = a.asq + u64::from(a.sq_head) * SQE_BYTES;
            a.sq_head = next(a.sq_head, a.sq_entries);
            let mut bytes = [0u8; 64];
            if let Err(e) = self.dma.read(at, &mut bytes) {
                self.violation(format!("fetching an admin command: {e}"));
                continue;
            }
            let Ok(sqe) = Sqe::read_from_bytes(&bytes) else {
                continue;
            };
            if let Some((status, dw0)) = self.admin_command(&sqe)? {
                self.post_admin(sqe.cid(), status, dw0);
            }
        }
        self.write_event_idx(0, false, tail);
        Ok(())
    }

    /// Posts an admin completion.
    pub(super) fn post_admin(&mut self, cid: u16, status: Status, dw0: u32) {
        let head = self.doorbell_value(0, true);
        self.write_event_idx(0, true, head);
        let Some(a) = self.admin.as_mut() else {
            return;
        };
        let mut cqe = completion(0, cid, a.sq_head, status, dw0);
        let overflow = u32::from(next(a.cq_tail, a.cq_entries)) == head;
        cqe.status = U16::new(cqe.status.get() | u16::from(a.phase));
        let at = a.acq + u64::from(a.cq_tail) * CQE_BYTES;
        a.cq_tail = next(a.cq_tail, a.cq_entries);
        if a.cq_tail == 0 {
            a.phase = !a.phase;
        }
        if overflow {
            self.violation("admin CQ overflow".into());
        }
        if let Err(e) = write_cqe(&self.dma, at, &cqe) {
            self.violation(format!("posting an admin completion: {e}"));
        }
    }

    /// Writes `data` where an admin command's PRP1 (and PRP2, for a second
    /// page) point.
    pub(super) fn admin_data_out(&mut self, sqe: &Sqe, data: &[u8]) -> Status {
        let (prp1, prp2) = (sqe.prp1.get(), sqe.prp2.get());
        let first = ((PAGE - prp1 % PAGE) as usize).min(data.len());
        let rest = &data[first..];
        let mut result = self.dma.write(prp1, &data[..first]);
        if result.is_ok() && !rest.is_empty() {
            result = if prp2.is_multiple_of(PAGE) && rest.len() <= PAGE_SIZE {
                self.dma.write(prp2, rest)
            } else {
                Err(Error::BadBuffer(format!("PRP2 {prp2:#x}")))
            };
        }
        match result {
            Ok(()) => Status::SUCCESS,
            Err(e) => {
                self.violation(format!("admin opcode {:#04x}: data: {e}", sqe.opcode));
                reject(StatusCodeType::Generic, generic::DATA_TRANSFER_ERROR)
            }
        }
    }

    /// Identify Controller data.
    pub(super) fn identify_controller(&self) -> IdentifyController {
        let mut id = IdentifyController::new_zeroed();
        let ascii = |field: &mut [u8], text: &str| {
            field.fill(b' ');
            field[..text.len()].copy_from_slice(text.as_bytes());
        };
        ascii(&mut id.sn, "MOCK-0001");
        ascii(&mut id.mn, "nvme-driver mock controller");
        ascii(&mut id.fr, "1.0");
        id.mdts = self.mdts;
        id.cntlid = U16::new(1);
        id.ver = U32::new(self.regs.vs);
        if self.shadow_supported {
            id.oacs = U16::new(nvme_spec::Oacs::DOORBELL_BUFFER_CONFIG.bits());
        }
        id.aerl = AERL;
        id.oncs = U16::new(self.oncs.bits());
        id.sqes = 0x66;
        id.cqes = 0x44;
        id.nn = U32::new(self.disks.keys().copied().max().unwrap_or(0));
        // SGLs supported, no alignment requirement.
        id.sgls = U32::new(u32::from(self.sgl));
        id
    }

    /// Identify (controller, active namespace list, namespace).
    pub(super) fn identify(&mut self, sqe: &Sqe) -> Status {
        let cns = sqe.cdw10.get() & 0xff;
        let nsid = sqe.nsid.get();
        let mut data = vec![0u8; PAGE_SIZE];
        match nvme_spec::admin::Cns::from_raw(cns as u8) {
            Some(nvme_spec::admin::Cns::Controller) => {
                data.copy_from_slice(self.identify_controller().as_bytes());
            }
            Some(nvme_spec::admin::Cns::ActiveNamespaceList) => {
                for (i, id) in self
                    .disks
                    .keys()
                    .filter(|&&id| id > nsid)
                    .take(1024)
                    .enumerate()
                {
                    data[i * 4..i * 4 + 4].copy_from_slice(&id.to_le_bytes());
                }
            }
            Some(nvme_spec::admin::Cns::Namespace) => {
                let Some(disk) = self.disks.get(&nsid) else {
                    return reject(
                        StatusCodeType::Generic,
                        generic::INVALID_NAMESPACE_OR_FORMAT,
                    );
                };
                let mut id = IdentifyNamespace::new_zeroed();
                id.nsze = disk.blocks.into();
                id.ncap = disk.blocks.into();
                id.nuse = disk.blocks.into();
                id.lbaf[0].lbads = disk.lba_size.trailing_zeros() as u8;
                data.copy_from_slice(id.as_bytes());
            }
            _ => return reject(StatusCodeType::Generic, generic::INVALID_FIELD),
        }
        self.admin_data_out(sqe, &data)
    }

    /// Doorbell Buffer Config: from now on tails and heads come from the
    /// shadow page. As QEMU does, the current doorbells are copied there.
    pub(super) fn doorbell_buffer_config(&mut self, sqe: &Sqe) -> Status {
        let (shadow, eventidx) = (sqe.prp1.get(), sqe.prp2.get());
        if !self.shadow_supported {
            return reject(StatusCodeType::Generic, generic::INVALID_OPCODE);
        }
        let mut probe = [0u8; PAGE_SIZE];
        let usable = |a: u64| a != 0 && a.is_multiple_of(PAGE);
        if !usable(shadow)
            || !usable(eventidx)
            || self.dma.read(shadow, &mut probe).is_err()
            || self.dma.read(eventidx, &mut probe).is_err()
        {
            self.violation(format!(
                "Doorbell Buffer Config: pages {shadow:#x} / {eventidx:#x} are not mapped pages"
            ));
            return reject(StatusCodeType::Generic, generic::INVALID_FIELD);
        }
        let mut live = vec![0usize, 1];
        for &qid in self.sqs.keys() {
            live.push(2 * usize::from(qid));
        }
        for &qid in self.cqs.keys() {
            live.push(2 * usize::from(qid) + 1);
        }
        for index in live {
            let value = self.regs.doorbells.get(index).copied().unwrap_or(0);
            let _ = self
                .dma
                .write(shadow + 4 * index as u64, &value.to_le_bytes());
        }
        self.dbbuf = Some((shadow, eventidx));
        self.stats.shadow_configs += 1;
        Status::SUCCESS
    }

    /// Runs one admin command: (status, DW0), or None for one that stays
    /// outstanding (an Asynchronous Event Request).
    pub(super) fn admin_command(&mut self, sqe: &Sqe) -> Result<Option<(Status, u32)>> {
        let cdw10 = sqe.cdw10.get();
        let cdw11 = sqe.cdw11.get();
        let qid = (cdw10 & 0xffff) as u16;
        let size = (cdw10 >> 16) + 1;
        let queue_error = |sc| reject(StatusCodeType::CommandSpecific, sc);
        let ok = (Status::SUCCESS, 0);
        Ok(Some(match AdminOpcode::from_raw(sqe.opcode) {
            Some(AdminOpcode::Identify) => (self.identify(sqe), 0),
            Some(AdminOpcode::DoorbellBufferConfig) => (self.doorbell_buffer_config(sqe), 0),
            Some(AdminOpcode::AsyncEventRequest) => {
                if self.aers.len() > usize::from(AERL) {
                    let limit = command_specific::ASYNC_EVENT_REQUEST_LIMIT_EXCEEDED;
                    (queue_error(limit), 0)
                } else {
                    self.aers.push(sqe.cid());
                    return Ok(None);
                }
            }
            Some(AdminOpcode::CreateIoCq) => {
                if qid == 0 || usize::from(qid) > self.io_queues || self.cqs.contains_key(&qid) {
                    (queue_error(command_specific::INVALID_QUEUE_IDENTIFIER), 0)
                } else if size < 2 || size > self.max_entries {
                    (queue_error(command_specific::INVALID_QUEUE_SIZE), 0)
                } else if cdw11 & 1 == 0 || !sqe.prp1.get().is_multiple_of(PAGE) {
                    self.violation(format!("Create I/O CQ {qid}: not a contiguous page"));
                    (reject(StatusCodeType::Generic, generic::INVALID_FIELD), 0)
                } else if cdw11 & 2 != 0 && cdw11 >> 16 >= self.msix_vectors {
                    let bad = command_specific::INVALID_INTERRUPT_VECTOR;
                    (queue_error(bad), 0)
                } else {
                    self.cqs.insert(
                        qid,
                        Cq {
                            base: sqe.prp1.get(),
                            entries: size as u16,
                            tail: 0,
                            phase: true,
                            vector: (cdw11 & 2 != 0).then_some((cdw11 >> 16) as u16),
                            backlog: VecDeque::new(),
                        },
                    );
                    self.reset_doorbell(2 * usize::from(qid) + 1);
                    ok
                }
            }
            Some(AdminOpcode::CreateIoSq) => {
                let cqid = (cdw11 >> 16) as u16;
                if qid == 0 || usize::from(qid) > self.io_queues || self.sqs.contains_key(&qid) {
                    (queue_error(command_specific::INVALID_QUEUE_IDENTIFIER), 0)
                } else if !self.cqs.contains_key(&cqid) {
                    (queue_error(command_specific::COMPLETION_QUEUE_INVALID), 0)
                } else if size < 2 || size > self.max_entries {
                    (queue_error(command_specific::INVALID_QUEUE_SIZE), 0)
                } else if cdw11 & 1 == 0 || !sqe.prp1.get().is_multiple_of(PAGE) {
                    self.violation(format!("Create I/O SQ {qid}: not a contiguous page"));
                    (reject(StatusCodeType::Generic, generic::INVALID_FIELD), 0)
                } else {
                    self.sqs.insert(
                        qid,
                        Sq {
                            base: sqe.prp1.get(),
                            entries: size as u16,
                            cqid,
                            head: 0,
                            tail: 0,
                            pending: Vec::new(),
                        },
                    );
                    self.reset_doorbell(2 * usize::from(qid));
                    self.stats.queues_created += 1;
                    ok
                }
            }
            Some(AdminOpcode::DeleteIoSq) => match self.sqs.remove(&qid) {
                Some(sq) => {
                    self.stats.queues_deleted += 1;
                    self.stats.dropped_by_delete += sq.pending.len() as u64;
                    ok
                }
                None => (queue_error(command_specific::INVALID_QUEUE_IDENTIFIER), 0),
            },
            Some(AdminOpcode::DeleteIoCq) => {
                if self.sqs.values().any(|sq| sq.cqid == qid) {
                    (queue_error(command_specific::INVALID_QUEUE_DELETION), 0)
                } else if self.cqs.remove(&qid).is_some() {
                    ok
                } else {
                    (queue_error(command_specific::INVALID_QUEUE_IDENTIFIER), 0)
                }
            }
            Some(AdminOpcode::Abort) => {
                self.stats.aborts += 1;
                let cid = (cdw10 >> 16) as u16;
                (Status::SUCCESS, u32::from(!self.abort(qid, cid)?))
            }
            Some(AdminOpcode::SetFeatures | AdminOpcode::GetFeatures) => {
                let fid = cdw10 & 0xff;
                if fid == nvme_spec::FeatureId::NumberOfQueues as u32 {
                    let n = (self.io_queues.max(1) - 1) as u32 & 0xffff;
                    (Status::SUCCESS, n | n << 16)
                } else {
                    ok
                }
            }
            _ => (reject(StatusCodeType::Generic, generic::INVALID_OPCODE), 0),
        }))
    }
}
