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

#[cfg(test)]
mod tests {
    use object::{Object, ObjectSection, ObjectSymbol};

    /// CO-RE relocations live in .BTF.ext: an object without them loads
    /// silently with the build host's offsets. This catches a stripped build.
    #[test]
    fn object_keeps_btf_and_core_relocations() {
        let obj = object::File::parse(super::bytes()).unwrap();
        assert!(obj.section_by_name(".BTF").is_some(), ".BTF missing");
        let ext = obj
            .section_by_name(".BTF.ext")
            .expect(".BTF.ext missing")
            .data()
            .unwrap();
        let u32_at = |o: usize| u32::from_le_bytes(ext[o..o + 4].try_into().unwrap());
        assert_eq!(
            u16::from_le_bytes([ext[0], ext[1]]),
            0xEB9F,
            "BTF.ext magic"
        );
        let hdr_len = u32_at(4) as usize;
        assert!(hdr_len >= 32, "header carries the CO-RE relocation section");
        let core_relo_len = u32_at(28);
        assert!(core_relo_len > 0, "no CO-RE relocation records");
        assert!(
            obj.section_by_name(".debug_info").is_none(),
            "DWARF should be stripped"
        );
    }

    #[test]
    fn object_has_every_program_the_loader_attaches() {
        let obj = object::File::parse(super::bytes()).unwrap();
        let names: Vec<String> = obj
            .symbols()
            .filter_map(|s| s.name().ok().map(str::to_owned))
            .collect();
        for p in [
            "handle_exec",
            "handle_fork",
            "handle_exit",
            "enter_openat",
            "exit_openat",
            "enter_open",
            "exit_open",
            "enter_openat2",
            "exit_openat2",
            "handle_sock_state",
            "handle_sock_send",
            "handle_sock_recv",
            "ssl_write",
            "ssl_read",
            "ssl_write_ex",
            "ssl_read_ex",
            "ssl_ret",
            "ssl_ret_ex",
            "gnutls_send",
            "gnutls_recv",
            "gnutls_ret",
            "core_canary",
        ] {
            assert!(
                names.iter().any(|n| n == p),
                "program {p} missing from the object"
            );
        }
    }
}
