// A SharedRegion has no Deref to [u8]: a peer may write it while the slice lives.
fn peek(region: &anyrdma_core::SharedRegion) -> &[u8] {
    region
}

fn main() {}
