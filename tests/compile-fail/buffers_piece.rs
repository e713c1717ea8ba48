// The pieces operations see (Buffers::for_each_piece) expose nothing outside the crate.
use anyrdma_core::Buffers;

fn address(region: &anyrdma_core::SharedRegion) -> usize {
    let mut offset = 0;
    region.for_each_piece(&mut |piece| offset = piece.offset);
    offset
}

fn main() {}
