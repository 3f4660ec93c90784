//! Struct member offsets and functions from the running kernel's BTF.
//!
//! Rust eBPF has no CO-RE relocations, so the agent resolves every offset the
//! programs need here, at start-up, and hands them over before load. A member
//! may sit inside anonymous structs or unions (`mm_struct` wraps almost all
//! of its fields in one, for struct randomisation); the search descends into
//! those and adds their offsets.
//!
//! The reader is deliberately small: it keeps the raw BTF (5–6 MiB for a
//! distribution kernel) plus one offset per type, and answers the few
//! questions ptwatch asks by scanning. A general BTF library that builds a
//! Rust value per type peaked at 40 MiB for the same blob, the largest part
//! of the agent's start-up footprint. When fentry programs need aya's own
//! parse, aya gets a skeleton of the blob with only their target functions
//! in it ([`KernelBtf::into_skeleton`]), so the whole blob is read and held once.

use std::path::{Path, PathBuf};

/// Where the kernel exposes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;
const TYPE_HEADER_LEN: usize = 12;

/// BTF kinds (`BTF_KIND_*` of include/uapi/linux/btf.h).
mod kind {
    pub const INT: u32 = 1;
    pub const PTR: u32 = 2;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const FWD: u32 = 7;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const RESTRICT: u32 = 11;
    pub const FUNC: u32 = 12;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const FLOAT: u32 = 16;
    pub const DECL_TAG: u32 = 17;
    pub const TYPE_TAG: u32 = 18;
    pub const ENUM64: u32 = 19;
}

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "no kernel BTF at {path} (the kernel needs CONFIG_DEBUG_INFO_BTF=y); ptwatch reads struct layouts from it"
    )]
    Missing { path: PathBuf },
    #[error("cannot read BTF from {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid BTF: {problem}")]
    Invalid { path: PathBuf, problem: String },
    #[error("BTF has no struct {0}")]
    NoStruct(String),
    #[error("BTF struct {strukt} has no member {member}")]
    NoMember { strukt: String, member: String },
    #[error("BTF member {strukt}.{member} is a bitfield, not byte-addressable")]
    Bitfield { strukt: String, member: String },
}

/// A parsed BTF blob with the queries ptwatch needs.
pub struct KernelBtf {
    path: PathBuf,
    data: Vec<u8>,
    /// Where the type section and the string section start in `data`.
    types_start: usize,
    strings: std::ops::Range<usize>,
    /// Offset in `data` of type id `i` at index `i - 1`.
    offsets: Vec<u32>,
}

/// The kernel's BTF reduced to the functions fentry programs attach to
/// ([`KernelBtf::into_skeleton`]): ~1.8 MiB instead of 5–6, and parsed by
/// aya only when the programs load.
pub struct Skeleton {
    path: PathBuf,
    blob: Vec<u8>,
}

impl Skeleton {
    /// aya's parse of it, for `FEntry::load`/`FExit::load`.
    pub fn to_aya(&self) -> Result<aya::Btf, BtfError> {
        aya::Btf::parse(&self.blob, aya::Endianness::default())
            .map_err(|err| BtfError::Invalid { path: self.path.clone(), problem: err.to_string() })
    }
}

/// One type's header.
#[derive(Clone, Copy)]
struct TypeHeader {
    name_off: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    /// `size` or `type`, depending on the kind.
    size_or_type: u32,
    /// Offset of the kind-specific data that follows the header.
    extra: usize,
}

impl KernelBtf {
    /// Read and index the BTF at `path` (normally [`VMLINUX_BTF`]).
    pub fn load(path: &Path) -> Result<Self, BtfError> {
        if !path.exists() {
            return Err(BtfError::Missing { path: path.to_owned() });
        }
        let data = std::fs::read(path).map_err(|source| BtfError::Read { path: path.to_owned(), source })?;
        Self::parse(path, data)
    }

    fn parse(path: &Path, data: Vec<u8>) -> Result<Self, BtfError> {
        let invalid = |problem: String| BtfError::Invalid { path: path.to_owned(), problem };
        let u16_at = |at: usize| data.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        let magic = u16_at(0).ok_or_else(|| invalid("shorter than a BTF header".into()))?;
        if magic != MAGIC {
            return Err(invalid(format!("bad magic {magic:#06x} (expected {MAGIC:#06x}, little-endian)")));
        }
        let header = |index: usize| read_u32(&data, 4 + index * 4).ok_or_else(|| invalid("truncated header".into()));
        let (hdr_len, type_off, type_len, str_off, str_len) =
            (header(0)? as usize, header(1)? as usize, header(2)? as usize, header(3)? as usize, header(4)? as usize);
        if hdr_len < HEADER_LEN {
            return Err(invalid(format!("header length {hdr_len}")));
        }
        let types_start = hdr_len + type_off;
        let types_end = types_start + type_len;
        let strings = hdr_len + str_off..hdr_len + str_off + str_len;
        if types_end > data.len() || strings.end > data.len() {
            return Err(invalid("sections extend past the end of the file".into()));
        }
        let mut btf = Self { path: path.to_owned(), data, types_start, strings, offsets: Vec::new() };
        let mut at = types_start;
        while at < types_end {
            let header = btf.header_at(at).ok_or_else(|| invalid(format!("truncated type at byte {at}")))?;
            btf.offsets.push(at as u32);
            at = header.extra
                + extra_len(&header).ok_or_else(|| invalid(format!("unknown BTF kind {}", header.kind)))?;
        }
        Ok(btf)
    }

    /// What fentry programs need of the kernel's BTF, for aya: the type id
    /// of each target function (`functions`). aya parses a blob into a
    /// value per type plus a copy of the strings, ~13 MiB for a
    /// distribution kernel on top of the blob itself: the largest part of
    /// the agent's start-up peak. So aya gets a blob with the same type ids
    /// in which only the FUNC types named in `functions` are real; every
    /// other type is a 12-byte placeholder (a pointer to void), and the
    /// strings are just those names. The whole blob is freed here.
    pub fn into_skeleton(self, functions: &[&str]) -> Result<Skeleton, BtfError> {
        let mut types = Vec::with_capacity(self.offsets.len() * TYPE_HEADER_LEN);
        // The string section starts with the empty name.
        let mut strings = vec![0u8];
        for &at in &self.offsets {
            let at = at as usize;
            let header = self.header_at(at).ok_or_else(|| self.invalid("truncated type"))?;
            let name = self.name(header.name_off);
            let (name_off, info) = if header.kind == kind::FUNC && functions.contains(&name) {
                let name_off = u32::try_from(strings.len()).map_err(|_| self.invalid("too many names"))?;
                strings.extend_from_slice(name.as_bytes());
                strings.push(0);
                // Kind and linkage as the kernel has them.
                (name_off, read_u32(&self.data, at + 4).unwrap_or_default())
            } else {
                (0, kind::PTR << 24)
            };
            for word in [name_off, info, 0] {
                types.extend_from_slice(&word.to_le_bytes());
            }
        }
        let (type_len, str_len) = (types.len() as u32, strings.len() as u32);
        let mut blob = Vec::with_capacity(HEADER_LEN + types.len() + strings.len());
        blob.extend_from_slice(&MAGIC.to_le_bytes());
        // Version 1, no flags.
        blob.extend_from_slice(&[1, 0]);
        // hdr_len, type_off, type_len, str_off, str_len.
        for word in [HEADER_LEN as u32, 0, type_len, type_len, str_len] {
            blob.extend_from_slice(&word.to_le_bytes());
        }
        blob.append(&mut types);
        blob.append(&mut strings);
        Ok(Skeleton { path: self.path, blob })
    }

    fn invalid(&self, problem: &str) -> BtfError {
        BtfError::Invalid { path: self.path.clone(), problem: problem.to_owned() }
    }

    /// Byte offset of `member` in `struct strukt`, searching through
    /// anonymous members.
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u64, BtfError> {
        let bits = self.member_bit_offset(strukt, member)?;
        if !bits.is_multiple_of(8) {
            return Err(BtfError::Bitfield { strukt: strukt.to_owned(), member: member.to_owned() });
        }
        Ok(bits / 8)
    }

    /// Like [`Self::member_offset`], `None` when the struct or the member
    /// does not exist on this kernel (e.g. `mm_struct::owner` without
    /// CONFIG_MEMCG).
    pub fn optional_member_offset(&self, strukt: &str, member: &str) -> Result<Option<u64>, BtfError> {
        match self.member_offset(strukt, member) {
            Ok(offset) => Ok(Some(offset)),
            Err(BtfError::NoMember { .. } | BtfError::NoStruct(_)) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Bit offset of `member` in `struct strukt`; bitfields allowed.
    pub fn member_bit_offset(&self, strukt: &str, member: &str) -> Result<u64, BtfError> {
        self.member(strukt, member).map(|(bits, _)| bits)
    }

    /// Size in bytes of `member` of `struct strukt` (through typedefs).
    pub fn member_size(&self, strukt: &str, member: &str) -> Result<u64, BtfError> {
        let (_, type_id) = self.member(strukt, member)?;
        Ok(self.size_of(type_id).unwrap_or(0))
    }

    /// Whether BTF describes a function named `name` (fentry needs it).
    pub fn has_function(&self, name: &str) -> bool {
        self.find(name, |h| h.kind == kind::FUNC).is_some()
    }

    /// Whether `enum enum_name` has an enumerator `value` (e.g. whether the
    /// kernel knows a BPF helper: `bpf_func_id`'s `BPF_FUNC_*`).
    pub fn has_enum_value(&self, enum_name: &str, value: &str) -> bool {
        let Some(found) = self.find(enum_name, |h| h.kind == kind::ENUM) else {
            return false;
        };
        (0..found.vlen)
            .any(|i| read_u32(&self.data, found.extra + i * 8).is_some_and(|name_off| self.name(name_off) == value))
    }

    /// The parameter names of function `name`, in order (`None`: no such
    /// function). Hooks read arguments by position: this confirms the
    /// position on the running kernel.
    pub fn function_params(&self, name: &str) -> Option<Vec<String>> {
        let func = self.find(name, |h| h.kind == kind::FUNC)?;
        let proto = self.header(func.size_or_type)?;
        if proto.kind != kind::FUNC_PROTO {
            return None;
        }
        (0..proto.vlen)
            .map(|i| read_u32(&self.data, proto.extra + i * 8).map(|name_off| self.name(name_off).to_owned()))
            .collect()
    }

    /// (bit offset, type id) of a member of the struct definition `strukt`.
    fn member(&self, strukt: &str, member: &str) -> Result<(u64, u32), BtfError> {
        // Several types can share a name (e.g. a forward declaration); the
        // struct with members is the definition.
        let definition = self
            .find(strukt, |h| h.kind == kind::STRUCT && h.vlen > 0)
            .ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        self.find_member(&definition, member, 0)
            .ok_or_else(|| BtfError::NoMember { strukt: strukt.to_owned(), member: member.to_owned() })
    }

    fn find_member(&self, strukt: &TypeHeader, wanted: &str, base_bits: u64) -> Option<(u64, u32)> {
        for i in 0..strukt.vlen {
            let at = strukt.extra + i * 12;
            let (name_off, type_id, offset) =
                (read_u32(&self.data, at)?, read_u32(&self.data, at + 4)?, read_u32(&self.data, at + 8)?);
            // With kind_flag, the top 8 bits are the bitfield size.
            let bits = base_bits + u64::from(if strukt.kind_flag { offset & 0x00ff_ffff } else { offset });
            let name = self.name(name_off);
            if name == wanted {
                return Some((bits, type_id));
            }
            if name.is_empty() {
                // Anonymous struct or union: look inside.
                let inner = self.header(self.skip_modifiers(type_id)?)?;
                if matches!(inner.kind, kind::STRUCT | kind::UNION) {
                    if let Some(found) = self.find_member(&inner, wanted, bits) {
                        return Some(found);
                    }
                }
            }
        }
        None
    }

    /// Follow typedefs and qualifiers to the underlying type id.
    fn skip_modifiers(&self, mut type_id: u32) -> Option<u32> {
        for _ in 0..32 {
            let header = self.header(type_id)?;
            match header.kind {
                kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG => {
                    type_id = header.size_or_type;
                }
                _ => return Some(type_id),
            }
        }
        None
    }

    fn size_of(&self, type_id: u32) -> Option<u64> {
        let header = self.header(self.skip_modifiers(type_id)?)?;
        match header.kind {
            kind::INT | kind::STRUCT | kind::UNION | kind::ENUM | kind::ENUM64 | kind::FLOAT => {
                Some(u64::from(header.size_or_type))
            }
            kind::PTR => Some(8),
            _ => None,
        }
    }

    /// The first type named `name` that `wanted` accepts.
    fn find(&self, name: &str, wanted: impl Fn(&TypeHeader) -> bool) -> Option<TypeHeader> {
        self.offsets
            .iter()
            .filter_map(|&at| self.header_at(at as usize))
            .find(|header| header.name_off != 0 && wanted(header) && self.name(header.name_off) == name)
    }

    fn header(&self, type_id: u32) -> Option<TypeHeader> {
        let at = *self.offsets.get((type_id as usize).checked_sub(1)?)?;
        self.header_at(at as usize)
    }

    fn header_at(&self, at: usize) -> Option<TypeHeader> {
        let info = read_u32(&self.data, at + 4)?;
        Some(TypeHeader {
            name_off: read_u32(&self.data, at)?,
            kind: (info >> 24) & 0x1f,
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 == 1,
            size_or_type: read_u32(&self.data, at + 8)?,
            extra: at + TYPE_HEADER_LEN,
        })
        .filter(|_| at >= self.types_start || self.offsets.is_empty())
    }

    fn name(&self, name_off: u32) -> &str {
        let start = self.strings.start + name_off as usize;
        let bytes = self.data.get(start..self.strings.end).unwrap_or_default();
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        std::str::from_utf8(&bytes[..end]).unwrap_or_default()
    }
}

/// Bytes of kind-specific data after a type's header (`None`: unknown kind).
fn extra_len(header: &TypeHeader) -> Option<usize> {
    let vlen = header.vlen;
    Some(match header.kind {
        kind::INT | kind::VAR | kind::DECL_TAG => 4,
        kind::PTR | kind::FWD | kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::FUNC => 0,
        kind::FLOAT | kind::TYPE_TAG => 0,
        kind::ARRAY => 12,
        kind::STRUCT | kind::UNION | kind::DATASEC | kind::ENUM64 => vlen * 12,
        kind::ENUM | kind::FUNC_PROTO => vlen * 8,
        _ => return None,
    })
}

fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    data.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests fail loudly")]
    use super::*;

    fn vmlinux() -> KernelBtf {
        KernelBtf::load(Path::new(VMLINUX_BTF)).expect("these tests need /sys/kernel/btf/vmlinux")
    }

    #[test]
    fn finds_enum_values() {
        let btf = vmlinux();
        assert!(btf.has_enum_value("bpf_func_id", "BPF_FUNC_probe_read_kernel"));
        assert!(!btf.has_enum_value("bpf_func_id", "BPF_FUNC_no_such_helper"));
        assert!(!btf.has_enum_value("no_such_enum", "BPF_FUNC_probe_read_kernel"));
    }

    #[test]
    fn resolves_direct_member() {
        let btf = vmlinux();
        // `mm` sits well inside task_struct; it is a pointer, so 8-aligned.
        let mm = btf.member_offset("task_struct", "mm").unwrap();
        assert!(mm > 0 && mm.is_multiple_of(8), "task_struct.mm at {mm}");
        // `state` (__state since 5.14) comes before it.
        let state = btf.member_offset("task_struct", "__state").unwrap();
        assert!(state < mm);
        assert_eq!(btf.member_size("task_struct", "mm").unwrap(), 8);
        assert_eq!(btf.member_size("task_struct", "comm").unwrap(), 0, "arrays have no scalar size here");
    }

    #[test]
    fn resolves_member_inside_anonymous_struct() {
        let btf = vmlinux();
        // mm_struct wraps its fields in an anonymous struct.
        let pgtables = btf.member_offset("mm_struct", "pgtables_bytes").unwrap();
        let mm_users = btf.member_offset("mm_struct", "mm_users").unwrap();
        assert!(pgtables.is_multiple_of(8));
        assert_ne!(pgtables, mm_users);
    }

    #[test]
    fn first_member_is_at_zero() {
        // `struct mmu_gather` starts with `mm`: the fentry programs rely on it.
        assert_eq!(vmlinux().member_offset("mmu_gather", "mm").unwrap(), 0);
    }

    #[test]
    fn bitfields_have_bit_offsets() {
        let btf = vmlinux();
        // `fullmm` is the first bit of a bitfield word after four 8-byte
        // members on every kernel ptwatch supports.
        let bit = btf.member_bit_offset("mmu_gather", "fullmm").unwrap();
        assert_eq!(bit, 256);
        assert!(matches!(btf.member_offset("mmu_gather", "need_flush_all"), Err(BtfError::Bitfield { .. })));
        assert_eq!(btf.member_bit_offset("mmu_gather", "need_flush_all").unwrap(), bit + 1);
    }

    #[test]
    fn optional_members() {
        let btf = vmlinux();
        assert!(btf.optional_member_offset("mm_struct", "no_such_member_ptwatch").unwrap().is_none());
        assert!(btf.optional_member_offset("no_such_struct_ptwatch", "x").unwrap().is_none());
        assert!(btf.optional_member_offset("mm_struct", "pgd").unwrap().is_some());
    }

    #[test]
    fn unknown_names_are_errors() {
        let btf = vmlinux();
        assert!(matches!(btf.member_offset("no_such_struct_ptwatch", "x"), Err(BtfError::NoStruct(_))));
        assert!(matches!(btf.member_offset("mm_struct", "no_such_member_ptwatch"), Err(BtfError::NoMember { .. })));
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let err = KernelBtf::load(Path::new("/nonexistent/vmlinux")).err().unwrap();
        assert!(err.to_string().contains("CONFIG_DEBUG_INFO_BTF"), "{err}");
    }

    #[test]
    fn not_btf_is_one_clear_error() {
        let err = KernelBtf::load(Path::new("/etc/passwd")).err().unwrap();
        assert_eq!(err.to_string(), "/etc/passwd is not valid BTF: bad magic 0x6f72 (expected 0xeb9f, little-endian)");
    }

    #[test]
    fn functions_and_their_parameters_are_found() {
        let btf = vmlinux();
        assert!(btf.has_function("tlb_remove_table"));
        assert!(!btf.has_function("no_such_function_ptwatch"));
        assert_eq!(btf.function_params("do_madvise").unwrap(), ["mm", "start", "len_in", "behavior"]);
        assert_eq!(btf.function_params("zap_huge_pmd").unwrap(), ["tlb", "vma", "pmd", "addr"]);
        assert!(btf.function_params("no_such_function_ptwatch").is_none());
    }

    #[test]
    fn aya_finds_the_wanted_functions_at_the_kernels_ids() {
        let full = aya::Btf::parse(&std::fs::read(VMLINUX_BTF).unwrap(), aya::Endianness::default()).unwrap();
        let skeleton = vmlinux().into_skeleton(&["do_madvise", "tlb_remove_table"]).unwrap().to_aya().unwrap();
        for function in ["do_madvise", "tlb_remove_table"] {
            let id = |btf: &aya::Btf| btf.id_by_type_name_kind(function, aya_obj::btf::BtfKind::Func).unwrap();
            assert_eq!(id(&skeleton), id(&full), "{function}");
        }
        assert!(
            skeleton.id_by_type_name_kind("zap_huge_pmd", aya_obj::btf::BtfKind::Func).is_err(),
            "only the wanted functions are named"
        );
    }
}
