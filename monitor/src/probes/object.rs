//! The compiled kernel object, embedded in the binary at build time.

/// Aligned wrapper: the ELF parser wants 8-byte aligned input.
#[repr(C, align(8))]
struct Aligned<T: ?Sized>(T);

static OBJECT: &Aligned<[u8]> =
    &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/nhiwatch.bpf.o")));

/// Bytes of the BPF ELF object (BTF and .BTF.ext kept, DWARF stripped).
pub fn bytes() -> &'static [u8] {
    &OBJECT.0
}
