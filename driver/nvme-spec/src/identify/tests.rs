//! Identify parsing on hand-built pages.

use super::*;
use std::format;
use std::string::ToString;
use std::vec::Vec;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros};

fn put(buf: &mut [u8], off: usize, bytes: &[u8]) {
    buf[off..off + bytes.len()].copy_from_slice(bytes);
}

#[test]
fn ascii_field() {
    let f = AsciiField::new(b"QEMU NVMe Ctrl                          ");
    assert_eq!(f.to_string(), "QEMU NVMe Ctrl");
    assert_eq!(f.as_bytes(), b"QEMU NVMe Ctrl");
    assert_eq!(f.as_str(), Some("QEMU NVMe Ctrl"));
    assert!(f == "QEMU NVMe Ctrl");
    assert_eq!(f.raw().len(), 40);
    let f = AsciiField::new(b"ab\x01c\xff\0 \0");
    assert_eq!(f.to_string(), "ab.c.");
    assert_eq!(f.as_bytes(), b"ab\x01c\xff");
    assert_eq!(f.as_str(), None);
    assert_eq!(format!("{f:?}"), "\"ab.c.\"");
    let f = AsciiField::new(b"  \0\0");
    assert!(f.is_empty());
    assert_eq!(f.to_string(), "");
    assert_eq!(AsciiField::new(b"").to_string(), "");
    // Leading spaces are kept.
    assert_eq!(AsciiField::new(b" x ").to_string(), " x");
}

fn qemu_controller() -> IdentifyController {
    let mut b = [0u8; 4096];
    put(&mut b, 0, &0x1b36u16.to_le_bytes()); // VID Red Hat
    put(&mut b, 2, &0x1af4u16.to_le_bytes()); // SSVID
    put(&mut b, 4, b"deadbeef            ");
    put(&mut b, 24, b"QEMU NVMe Ctrl                          ");
    put(&mut b, 64, b"9.2.0   ");
    b[72] = 6; // RAB
    put(&mut b, 73, &[0x00, 0x54, 0x52]); // IEEE OUI 0x525400
    b[77] = 7; // MDTS
    put(&mut b, 78, &0u16.to_le_bytes());
    put(&mut b, 80, &0x0001_0400u32.to_le_bytes()); // 1.4.0
    b[111] = 1; // I/O controller
    put(&mut b, 128, &10u16.to_le_bytes()); // CRDT1 = 1 s
    put(&mut b, 256, &0x012au16.to_le_bytes()); // OACS
    b[258] = 3; // ACL
    b[259] = 3; // AERL
    b[262] = 63; // ELPE
    b[263] = 0; // NPSS
    put(&mut b, 266, &343u16.to_le_bytes()); // WCTEMP 70 C
    put(&mut b, 268, &373u16.to_le_bytes()); // CCTEMP 100 C
    put(&mut b, 280, &(1u128 << 40).to_le_bytes()); // TNVMCAP 1 TiB
    b[512] = 0x66;
    b[513] = 0x44;
    put(&mut b, 516, &256u32.to_le_bytes()); // NN
    put(&mut b, 520, &0x015du16.to_le_bytes()); // ONCS
    b[525] = 0x07; // VWC present, broadcast flush
    put(&mut b, 536, &0x0010_0001u32.to_le_bytes()); // SGLS
    put(&mut b, 768, b"nqn.2019-08.org.qemu:deadbeef");
    put(&mut b, 2048, &2500u16.to_le_bytes()); // PSD0 MP 25 W
    put(&mut b, 2052, &16u32.to_le_bytes()); // ENLAT
    put(&mut b, 2056, &4u32.to_le_bytes()); // EXLAT
    IdentifyController::read_from_bytes(&b).expect("4096 bytes")
}

#[test]
fn identify_controller_fields() {
    let c = qemu_controller();
    assert_eq!(c.vid.get(), 0x1b36);
    assert_eq!(c.ssvid.get(), 0x1af4);
    assert_eq!(c.serial().to_string(), "deadbeef");
    assert_eq!(c.model().to_string(), "QEMU NVMe Ctrl");
    assert_eq!(c.firmware().to_string(), "9.2.0");
    assert_eq!(c.subnqn().to_string(), "nqn.2019-08.org.qemu:deadbeef");
    assert_eq!(c.ieee_oui(), 0x52_5400);
    assert_eq!(c.version().to_string(), "1.4.0");
    assert_eq!(c.controller_type(), ControllerType::Io);
    assert_eq!(c.max_transfer_bytes(4096), Some(512 * 1024));
    assert_eq!(
        c.oacs(),
        Oacs::FORMAT | Oacs::NS_MGMT | Oacs::DIRECTIVES | Oacs::DOORBELL_BUFFER_CONFIG
    );
    assert!(c.oacs().contains(Oacs::DOORBELL_BUFFER_CONFIG));
    assert_eq!(
        c.oncs(),
        Oncs::COMPARE
            | Oncs::DSM
            | Oncs::WRITE_ZEROES
            | Oncs::SAVE_SELECT
            | Oncs::TIMESTAMP
            | Oncs::COPY
    );
    assert!(c.vwc_present());
    assert_eq!(c.sgl_support(), SglSupport::ByteAligned);
    assert_eq!((c.sqes_min(), c.sqes_max()), (6, 6));
    assert_eq!((c.cqes_min(), c.cqes_max()), (4, 4));
    assert_eq!(c.nn(), 256);
    assert_eq!(c.tnvmcap(), 1 << 40);
    assert_eq!(c.unvmcap(), 0);
    assert_eq!(c.crdt_ms(1), 1000);
    assert_eq!(c.crdt_ms(0), 0);
    assert_eq!(c.crdt_ms(9), 0);
    assert_eq!(c.abort_limit(), 4);
    assert_eq!(c.error_log_entries(), 64);
    assert_eq!(c.wctemp.get(), 343);
    assert_eq!(c.power_states().len(), 1);
    let ps = &c.power_states()[0];
    assert_eq!(ps.enlat.get(), 16);
    assert_eq!(ps.exlat.get(), 4);
    let dbg = format!("{c:?}");
    assert!(dbg.contains("QEMU NVMe Ctrl"), "{dbg}");
    assert!(dbg.len() < 1000);
}

#[test]
fn identify_controller_hostile() {
    let mut c = IdentifyController::new_zeroed();
    assert_eq!(c.max_transfer_bytes(4096), None);
    c.mdts = 1;
    assert_eq!(c.max_transfer_bytes(4096), Some(8192));
    c.mdts = 51;
    assert_eq!(c.max_transfer_bytes(4096), Some(1 << 63));
    c.mdts = 52;
    assert_eq!(c.max_transfer_bytes(4096), Some(u64::MAX));
    c.mdts = 255;
    assert_eq!(c.max_transfer_bytes(4096), Some(u64::MAX));
    assert_eq!(c.max_transfer_bytes(0), Some(0));
    c.npss = 255;
    assert_eq!(c.power_states().len(), 32);
    c.cntrltype = 9;
    assert_eq!(c.controller_type(), ControllerType::Reserved(9));
    c.sgls = U32::new(3);
    assert_eq!(c.sgl_support(), SglSupport::Reserved);
    c.sqes = 0x77;
    c.oacs = U16::new(0xffff);
    assert!(c.oacs().contains(Oacs::all()));
    assert_eq!(c.oacs().bits(), 0xffff);
    c.sn = [0xff; 20];
    assert_eq!(c.serial().to_string(), ".".repeat(20));
    c.acl = 255;
    assert_eq!(c.abort_limit(), 256);
}

fn namespace(nlbaf: u8, flbas: u8) -> IdentifyNamespace {
    let mut ns = IdentifyNamespace::new_zeroed();
    ns.nsze = U64::new(0x20_0000);
    ns.ncap = U64::new(0x20_0000);
    ns.nuse = U64::new(0x1000);
    ns.nlbaf = nlbaf;
    ns.flbas = flbas;
    // QEMU's default LBA formats: 512/4096 bytes x 0/8/16/64 bytes metadata.
    let formats = [
        (0u16, 9u8),
        (8, 9),
        (16, 9),
        (64, 9),
        (0, 12),
        (8, 12),
        (16, 12),
        (64, 12),
    ];
    for (i, (ms, lbads)) in formats.into_iter().enumerate() {
        ns.lbaf[i] = LbaFormat {
            ms: U16::new(ms),
            lbads,
            rp: 0,
        };
    }
    ns
}

#[test]
fn identify_namespace() {
    let ns = namespace(7, 0);
    assert_eq!(ns.nsze(), 0x20_0000);
    assert_eq!(ns.lba_format_count(), 8);
    assert_eq!(ns.lba_formats().len(), 8);
    assert_eq!(ns.current_lba_format_index(), 0);
    assert_eq!(ns.lba_size(), Some(512));
    assert_eq!(ns.size_bytes(), Some(0x20_0000 * 512));

    let ns = namespace(7, 0x15); // format 5, metadata extended
    assert_eq!(ns.current_lba_format_index(), 5);
    let f = ns.current_lba_format().expect("valid");
    assert_eq!(f.lba_size(), Some(4096));
    assert_eq!(f.metadata_size(), 8);

    // FLBAS bits 6:5 extend the index beyond 15.
    let mut ns = namespace(63, 0x61);
    assert_eq!(ns.current_lba_format_index(), 0x31);
    ns.lbaf[0x31] = LbaFormat {
        ms: U16::ZERO,
        lbads: 13,
        rp: 0xfe,
    };
    assert_eq!(ns.lba_size(), Some(8192));

    // Index beyond NLBAF.
    let ns = namespace(3, 0x04);
    assert_eq!(ns.current_lba_format(), None);
    assert_eq!(ns.lba_size(), None);
    assert_eq!(ns.size_bytes(), None);
    // NLBAF beyond 63 is clamped.
    let ns = namespace(255, 0x7f);
    assert_eq!(ns.lba_formats().len(), 64);
    assert_eq!(ns.current_lba_format_index(), 63);
    assert_eq!(ns.current_lba_format(), Some(LbaFormat::default()));
    assert_eq!(ns.lba_size(), None);

    let mut ns = namespace(0, 0);
    ns.nsze = U64::new(u64::MAX);
    assert_eq!(ns.size_bytes(), None);
    ns.nsfeat = 0x1f;
    assert!(ns.features().contains(NsFeatures::all()));
    ns.nvmcap = (0x1234u128 << 64 | 5).to_le_bytes();
    assert_eq!(ns.nvmcap(), 0x1234u128 << 64 | 5);
    let dbg = format!("{ns:?}");
    assert!(dbg.contains("nsze"), "{dbg}");
}

#[test]
fn lba_format_validation() {
    for lbads in 0..=u8::MAX {
        let f = LbaFormat {
            ms: U16::ZERO,
            lbads,
            rp: 0,
        };
        match f.lba_size() {
            Some(sz) => {
                assert!((9..=31).contains(&lbads));
                assert_eq!(sz, 1 << lbads);
            }
            None => assert!(!(9..=31).contains(&lbads)),
        }
    }
    let b = [0x08, 0x00, 0x0c, 0x01];
    let f = LbaFormat::read_from_bytes(&b[..]).expect("4 bytes");
    assert_eq!(f.metadata_size(), 8);
    assert_eq!(f.lba_size(), Some(4096));
}

#[test]
fn namespace_list() {
    let mut l = ActiveNamespaceList::new_zeroed();
    assert!(l.is_empty());
    assert_eq!(l.len(), 0);
    assert_eq!(l.last(), None);
    for (i, id) in [1u32, 2, 5, 9].into_iter().enumerate() {
        l.ids[i] = U32::new(id);
    }
    l.ids[6] = U32::new(77); // after the terminator: ignored
    assert_eq!(l.iter().collect::<Vec<_>>(), [1, 2, 5, 9]);
    assert_eq!(l.len(), 4);
    assert_eq!(l.last(), Some(9));
    assert!(!l.is_full());
    assert_eq!(format!("{l:?}"), "[1, 2, 5, 9]");
    for (i, id) in l.ids.iter_mut().enumerate() {
        *id = U32::new(i as u32 + 1);
    }
    assert!(l.is_full());
    assert_eq!(l.len(), 1024);
    assert_eq!(l.last(), Some(1024));
    assert!(format!("{l:?}").contains("1024 total"));
}
