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
    use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

    use crate::probes::sensors;

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

    /// Programs in the object: function symbols by name, with their section.
    fn programs(obj: &object::File<'_>) -> Vec<(String, String)> {
        obj.symbols()
            .filter(|s| s.kind() == SymbolKind::Text && s.is_global())
            .map(|s| {
                let section = s
                    .section_index()
                    .and_then(|i| obj.section_by_index(i).ok())
                    .and_then(|sec| sec.name().ok().map(str::to_owned))
                    .unwrap_or_default();
                (s.name().unwrap().to_owned(), section)
            })
            .collect()
    }

    /// The sensor table and the object agree both ways: every row is a program in the section
    /// its hook implies, and every program in the object is a row.
    #[test]
    fn object_and_sensor_table_list_the_same_programs() {
        let obj = object::File::parse(super::bytes()).unwrap();
        let found = programs(&obj);
        let table: Vec<_> = sensors::ALL
            .iter()
            .flat_map(|s| s.programs.iter().map(move |p| (s.name, p)))
            .collect();
        for (sensor, p) in &table {
            let section = found
                .iter()
                .find(|(name, _)| name == p.name)
                .map(|(_, sec)| sec.as_str());
            assert_eq!(
                section,
                Some(p.hook.section().as_str()),
                "sensor {sensor}: program {} missing from the object or in the wrong section",
                p.name
            );
        }
        for (name, section) in &found {
            assert!(
                table.iter().any(|(_, p)| p.name == name),
                "program {name} ({section}) is in the object but in no sensor table"
            );
        }
        assert_eq!(found.len(), table.len(), "a program listed twice");
    }

    /// Sensors share maps through weak definitions (include/maps.h): the linker must have
    /// made each one map, and the maps the loader takes must be there.
    #[test]
    fn shared_maps_are_linked_into_one() {
        let obj = object::File::parse(super::bytes()).unwrap();
        let maps = obj.section_by_name(".maps").expect(".maps").index();
        let mut names: Vec<&str> = obj
            .symbols()
            .filter(|s| s.section_index() == Some(maps))
            .map(|s| s.name().unwrap())
            .collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "a map defined twice: {names:?}");
        for m in [
            "events",
            "counters",
            "scratch",
            "watch_paths",
            "watch_inodes",
            "watch_devs",
            "watch_ino_bits",
            "watch_head_bits",
            "tls_calls",
            "tls_session_socks",
            "canary",
        ] {
            assert!(names.contains(&m), "map {m} missing: {names:?}");
        }
        // The settings the loader writes before loading (override_global): one copy each.
        for g in ["self_tgid", "wakeup_bytes", "tls_capture_len"] {
            let n = obj.symbols().filter(|s| s.name().ok() == Some(g)).count();
            assert_eq!(n, 1, "global {g} defined {n} times");
        }
        let license = obj
            .section_by_name("license")
            .expect("license")
            .data()
            .unwrap();
        assert_eq!(license, b"GPL\0", "exactly one license");
    }
}
