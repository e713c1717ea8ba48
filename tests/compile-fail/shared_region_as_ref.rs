// Nor is it AsRef<[u8]> or Borrow<[u8]>.
use std::borrow::Borrow;

fn view(region: &anyrdma_core::SharedRegion) -> &[u8] {
    region.as_ref()
}

fn borrowed(region: &anyrdma_core::SharedRegion) -> &[u8] {
    region.borrow()
}

fn main() {}
