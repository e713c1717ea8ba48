// A SharedRegion cannot be indexed or sliced.
fn first(region: &anyrdma_core::SharedRegion) -> u8 {
    region[0]
}

fn head(region: &anyrdma_core::SharedRegion) -> &[u8] {
    &region[..8]
}

fn main() {}
