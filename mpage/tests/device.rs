//! The bio builder's merge predicate and the recording device's checks.

use std::sync::Arc;

use mpage::{
    Bio, BioBuilder, BioFlags, BioOp, BlockDevice, DeviceError, Geometry, RecordingDevice, Segment,
};
use pagecache::{BlockSize, FolioOrder, Grab, PageCache, ReadIo, VecMemory};

fn read_io(cache: &PageCache, bs: usize, index: u64) -> ReadIo {
    let file = cache.add_file(BlockSize::new(bs).unwrap());
    match cache
        .grab(file, index, FolioOrder::new(0).unwrap())
        .unwrap()
    {
        Grab::Created(l) => l.start_read(),
        Grab::Cached(_) => unreachable!(),
    }
}

#[test]
fn can_merge_enforces_lba_prp_and_size() {
    let cache = PageCache::new(Arc::new(VecMemory::new()), 1 << 20).unwrap();
    let g = Geometry::new(512, 1 << 20, 8192).unwrap();
    let a = read_io(&cache, 1024, 0);
    let mut b = BioBuilder::new(BioOp::Read, BioFlags::empty(), g);
    let iova = a.folio().iova();
    assert!(!b.can_merge(100, iova, 1024), "nothing open");
    let closed = b
        .add(100, iova, 1024, |o, l| {
            a.part(o, l)
                .map(Segment::read)
                .map_err(|e| DeviceError::InvalidBio(e.to_string()))
        })
        .unwrap();
    assert!(closed.is_empty());
    assert!(b.can_merge(102, iova + 1024, 1024), "iova-contiguous");
    assert!(!b.can_merge(103, iova + 1024, 1024), "LBA gap");
    assert!(
        !b.can_merge(102, iova + 4096, 1024),
        "previous segment ends mid-page"
    );
    assert!(!b.can_merge(102, iova + 1024, 8192), "over max transfer");
}

#[test]
fn recording_device_rejects_prp_illegal_bios_and_fails_past_the_end() {
    let cache = PageCache::new(Arc::new(VecMemory::new()), 1 << 20).unwrap();
    let g = Geometry::new(512, 16, 1 << 20).unwrap();
    let mut dev = RecordingDevice::new(g).unwrap();
    let a = read_io(&cache, 1024, 0);
    let b = read_io(&cache, 1024, 1);
    // Two 1 KiB pieces at page offset 0 of different folios: the first
    // ends mid-page, so the pair is illegal.
    let segs = vec![
        Segment::read(a.part(0, 1024).unwrap()),
        Segment::read(b.part(0, 1024).unwrap()),
    ];
    let bio = Bio::new(BioOp::Read, 0, 512, BioFlags::empty(), segs).unwrap();
    assert!(!bio.is_prp_legal(4096));
    let (back, err) = dev.submit(bio).unwrap_err();
    assert!(matches!(err, DeviceError::InvalidBio(_)));
    back.complete(Err(err));
    assert!(dev.commands().is_empty());

    let c = read_io(&cache, 4096, 0);
    let bio = Bio::new(
        BioOp::Read,
        12,
        512,
        BioFlags::empty(),
        vec![Segment::read(c.part(0, 4096).unwrap())],
    )
    .unwrap();
    dev.submit(bio).unwrap();
    let mut done = Vec::new();
    dev.poll(&mut done).unwrap();
    assert_eq!(
        done[0].result,
        Err(DeviceError::Status {
            status: mpage::device::status::LBA_OUT_OF_RANGE
        })
    );
    assert_eq!(
        done[0].result.as_ref().unwrap_err().errno(),
        pagecache::Errno::RemoteIo
    );
    let f = c.folio().clone();
    drop(c);
    done.pop().unwrap().finish();
    assert!(!f.is_uptodate() && !f.is_locked());
}

#[test]
fn dropped_bio_completes_its_parts_with_eio() {
    let cache = PageCache::new(Arc::new(VecMemory::new()), 1 << 20).unwrap();
    let a = read_io(&cache, 4096, 0);
    let f = a.folio().clone();
    let bio = Bio::new(
        BioOp::Read,
        0,
        512,
        BioFlags::empty(),
        vec![Segment::read(a.part(0, 4096).unwrap())],
    )
    .unwrap();
    drop(a);
    drop(bio);
    assert_eq!(f.error(), Some(pagecache::Errno::Io));
    assert!(!f.is_locked());
}
