//! Struct member offsets from the running kernel's BTF.
//!
//! Rust eBPF has no CO-RE relocations, so the agent resolves every offset the
//! programs need here, at start-up, and hands them over before load. A member
//! may sit inside anonymous structs or unions (`mm_struct` wraps almost all
//! of its fields in one, for struct randomisation); the search descends into
//! those and adds their offsets.

use std::path::{Path, PathBuf};

use btf_rs::{Btf, Type};

/// Where the kernel exposes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "no kernel BTF at {path} (the kernel needs CONFIG_DEBUG_INFO_BTF=y); ptwatch reads struct layouts from it"
    )]
    Missing { path: PathBuf },
    #[error("cannot parse BTF from {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: btf_rs::Error,
    },
    #[error("BTF has no struct {0}")]
    NoStruct(String),
    #[error("BTF struct {strukt} has no member {member}")]
    NoMember { strukt: String, member: String },
    #[error("BTF member {strukt}.{member} is a bitfield, not byte-addressable")]
    Bitfield { strukt: String, member: String },
    #[error("BTF lookup of {what} failed")]
    Lookup {
        what: String,
        #[source]
        source: btf_rs::Error,
    },
}

/// A parsed BTF blob with the queries ptwatch needs.
pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    /// Parse the BTF at `path` (normally [`VMLINUX_BTF`]).
    pub fn load(path: &Path) -> Result<Self, BtfError> {
        if !path.exists() {
            return Err(BtfError::Missing { path: path.to_owned() });
        }
        let btf = Btf::from_file(path).map_err(|source| BtfError::Parse { path: path.to_owned(), source })?;
        Ok(Self { btf })
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

    /// Like [`Self::member_offset`], `None` when the member does not exist
    /// on this kernel (e.g. `mm_struct::owner` without CONFIG_MEMCG).
    pub fn optional_member_offset(&self, strukt: &str, member: &str) -> Result<Option<u64>, BtfError> {
        match self.member_offset(strukt, member) {
            Ok(offset) => Ok(Some(offset)),
            Err(BtfError::NoMember { .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Bit offset of `member` in `struct strukt`; bitfields allowed.
    pub fn member_bit_offset(&self, strukt: &str, member: &str) -> Result<u64, BtfError> {
        let lookup = |source| BtfError::Lookup { what: format!("struct {strukt}"), source };
        let types = self.btf.resolve_types_by_name(strukt).map_err(lookup)?;
        // Several types can share a name (e.g. a forward declaration); the
        // struct with members is the definition.
        let definition = types
            .iter()
            .find_map(|t| match t {
                Type::Struct(s) if !s.members.is_empty() => Some(s),
                _ => None,
            })
            .ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        self.find_member_bits(definition, member, 0)?
            .ok_or_else(|| BtfError::NoMember { strukt: strukt.to_owned(), member: member.to_owned() })
    }

    /// Whether BTF describes a function named `name` (fentry needs it).
    pub fn has_function(&self, name: &str) -> bool {
        self.btf
            .resolve_types_by_name(name)
            .map(|types| types.iter().any(|t| matches!(t, Type::Func(_))))
            .unwrap_or(false)
    }

    fn find_member_bits(&self, strukt: &btf_rs::Struct, wanted: &str, base_bits: u64) -> Result<Option<u64>, BtfError> {
        let lookup = |source| BtfError::Lookup { what: format!("member {wanted}"), source };
        for member in &strukt.members {
            let name = self.btf.resolve_name(member).map_err(lookup)?;
            let bits = base_bits + u64::from(member.bit_offset());
            if name == wanted {
                return Ok(Some(bits));
            }
            if name.is_empty() {
                // Anonymous struct or union: look inside.
                let inner = self.btf.resolve_chained_type(member).map_err(lookup)?;
                if let Type::Struct(s) | Type::Union(s) = self.skip_modifiers(inner)? {
                    if let Some(found) = self.find_member_bits(&s, wanted, bits)? {
                        return Ok(Some(found));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Follow typedefs and qualifiers to the underlying type.
    fn skip_modifiers(&self, mut t: Type) -> Result<Type, BtfError> {
        loop {
            match &t {
                Type::Typedef(_) | Type::Volatile(_) | Type::Const(_) | Type::Restrict(_) | Type::TypeTag(_) => {
                    let Some(inner) = t.as_btf_type() else {
                        return Ok(t);
                    };
                    t = self
                        .btf
                        .resolve_chained_type(inner)
                        .map_err(|source| BtfError::Lookup { what: "typedef".to_owned(), source })?;
                }
                _ => return Ok(t),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests fail loudly")]
    use super::*;

    fn vmlinux() -> KernelBtf {
        KernelBtf::load(Path::new(VMLINUX_BTF)).expect("these tests need /sys/kernel/btf/vmlinux")
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
    fn functions_are_found() {
        let btf = vmlinux();
        assert!(btf.has_function("tlb_remove_table"));
        assert!(!btf.has_function("no_such_function_ptwatch"));
    }
}
