//! Memory the user already owns is registered where it is, carries traffic, and comes back
//! intact: `Vec<u8>`, `Box<[u8]>`, and with the `bytes` and `memmap2` features (enabled in
//! the Tokio build of the device tests) `BytesMut` and memory mappings: anonymous, of a file,
//! and of huge pages.

mod support;

use anyrdma::{Access, Error, StableBytes};
use support::{fill, holds_pattern, within, Pair, Rt};

const LEN: usize = 10_000;

/// Sends `message` (registered in place) into `inbox` (registered in place), then takes both
/// back: the inbox holds the message's bytes, the message is unchanged.
async fn round_trip<T: StableBytes + AsMut<[u8]> + AsRef<[u8]>>(
    rt: Rt,
    pair: &Pair,
    what: &str,
    mut message: T,
    inbox: T,
) {
    fill(message.as_mut(), 17);
    let len = message.as_ref().len();
    let address = message.as_mut().as_ptr() as u64;
    let message = pair
        .pd
        .register_owned(message, Access::LOCAL)
        .map_err(|(_, err)| err)
        .expect("register the message in place");
    assert_eq!(
        message.addr(),
        address,
        "{what}: registered where it is, not copied"
    );
    let inbox = pair
        .pd
        .register_owned(inbox, Access::LOCAL)
        .map_err(|(_, err)| err)
        .expect("register the inbox in place");
    let receive = pair.b.recv(inbox);
    let (sent, message) = within(10, "send", pair.a.send(message)).await;
    sent.expect("send from an owned container");
    let (received, inbox) = within(10, "receive", receive).await;
    assert_eq!(received.expect("receive").len, len);

    // The wrong type, or a piece held elsewhere, gives the buffer back.
    let mut inbox = inbox;
    let tail = inbox.split_off(len / 2);
    let Err(mut inbox) = inbox.into_owned::<T>() else {
        panic!("{what}: into_owned took a piece that is not the whole registration");
    };
    inbox.unsplit(tail).expect("neighbours join");
    let message: T = message
        .into_owned()
        .unwrap_or_else(|_| panic!("{what}: message back"));
    let inbox: T = inbox
        .into_owned()
        .unwrap_or_else(|_| panic!("{what}: inbox back"));
    assert!(
        holds_pattern(message.as_ref(), 17),
        "{}: {what}: message changed",
        rt.name()
    );
    assert!(
        holds_pattern(inbox.as_ref(), 17),
        "{}: {what}: bytes did not arrive",
        rt.name()
    );
}

async fn owned_containers_round_trip(rt: Rt) {
    if !support::device_present("owned_containers_round_trip") {
        return;
    }
    let pair = Pair::new();
    round_trip(rt, &pair, "Vec<u8>", vec![0u8; LEN], vec![0u8; LEN]).await;
    let boxed = || vec![0u8; LEN].into_boxed_slice();
    round_trip(rt, &pair, "Box<[u8]>", boxed(), boxed()).await;
    #[cfg(feature = "bytes")]
    {
        let bytes = || bytes::BytesMut::zeroed(LEN);
        round_trip(rt, &pair, "BytesMut", bytes(), bytes()).await;
    }
    #[cfg(feature = "memmap2")]
    {
        let anonymous = || memmap2::MmapMut::map_anon(LEN).expect("anonymous mapping");
        round_trip(rt, &pair, "anonymous MmapMut", anonymous(), anonymous()).await;
        let file = || {
            let file = tempfile_of(LEN);
            // SAFETY: the file is this test's own, unlinked, and nothing else maps it.
            unsafe { memmap2::MmapMut::map_mut(&file) }.expect("file mapping")
        };
        round_trip(rt, &pair, "file MmapMut", file(), file()).await;
        let huge = || huge_pages(LEN);
        round_trip(rt, &pair, "huge-page MmapMut", huge(), huge()).await;
    }
}

/// An anonymous mapping of `len` bytes (rounded up to 2 MiB) backed by huge pages. The guest
/// reserves none by default: reserve a few (the tests run as root there).
#[cfg(feature = "memmap2")]
fn huge_pages(len: usize) -> memmap2::MmapMut {
    const HUGE_PAGE: usize = 2 << 20;
    let reserved = std::fs::read_to_string("/proc/sys/vm/nr_hugepages")
        .ok()
        .and_then(|text| text.trim().parse::<usize>().ok())
        .unwrap_or(0);
    if reserved < 8 {
        std::fs::write("/proc/sys/vm/nr_hugepages", "8").expect("reserve huge pages (as root)");
    }
    memmap2::MmapOptions::new()
        .len(len.next_multiple_of(HUGE_PAGE))
        .huge(None)
        .map_anon()
        .expect("an anonymous huge-page mapping")
}

/// An unlinked file of `len` bytes in the temporary directory.
#[cfg(feature = "memmap2")]
fn tempfile_of(len: usize) -> std::fs::File {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "anyrdma-owned-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .expect("create a temporary file");
    std::fs::remove_file(&path).expect("unlink it");
    file.set_len(len as u64).expect("size it");
    file
}

/// Refusals give the container back, untouched.
async fn refused_registrations_give_the_container_back(rt: Rt) {
    if !support::device_present("refused_registrations_give_the_container_back") {
        return;
    }
    let pair = Pair::new();
    let mut data = vec![0u8; 64];
    fill(&mut data, 5);
    let (data, err) = pair
        .pd
        .register_owned(data, Access::REMOTE_WRITE)
        .expect_err("memory a peer can write is a SharedRegion");
    assert!(matches!(err, Error::PeerWritable { .. }), "{err:?}");
    assert!(
        holds_pattern(&data, 5),
        "{}: the container changed",
        rt.name()
    );
    let (empty, err) = pair
        .pd
        .register_owned(Vec::<u8>::new(), Access::LOCAL)
        .expect_err("nothing to register");
    assert!(matches!(err, Error::EmptyRegistration), "{err:?}");
    assert!(empty.is_empty());
}

runtime_tests!(
    owned_containers_round_trip,
    refused_registrations_give_the_container_back
);
