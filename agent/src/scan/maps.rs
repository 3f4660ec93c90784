//! Parsing `/proc/PID/smaps`: the mappings of `/proc/PID/maps` plus the few
//! per-mapping counters that tell where page tables cannot be (hugetlb,
//! PMD-mapped file THPs), which mappings have nothing to read and which are
//! entirely resident ([`Mapping::kind`]). The same parser reads
//! `/proc/PID/maps`, whose mappings come without counters (and so are all
//! [`Kind::Unknown`]) but cost nothing to list.

use super::estimate::{Geometry, Leaf};

/// What the counters of `smaps` prove about a mapping's page tables, before
/// any of `pagemap` is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Outside the user address space `pagemap` covers (`[vsyscall]`).
    Outside,
    /// Nothing resident or swapped: no entry, no table needed.
    Empty,
    /// Every page resident: every 2 MiB span it touches needs its table.
    Resident,
    /// Hugetlb: mapped by PMD or PUD entries, never by PTE tables.
    Hugetlb { leaf: Leaf, fill: Fill },
    /// Only `pagemap` can tell which spans hold entries.
    Unknown,
}

/// How much of a hugetlb mapping holds pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    Empty,
    Full,
    /// Some pages: which upper-level tables are needed is not known.
    Partial,
}

/// One mapping (VMA) and the counters of it the estimate uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    /// Path, `[heap]`, `[stack]`…, or empty for anonymous memory.
    pub name: String,
    /// `KernelPageSize`, bytes: larger than the base page size for hugetlb.
    pub kernel_page_size: Option<u64>,
    /// `Rss` and `Swap`, bytes; `None` when smaps did not say.
    pub rss: Option<u64>,
    pub swap: Option<u64>,
    /// `AnonHugePages`, bytes: anonymous THPs mapped by a PMD.
    pub anon_huge: u64,
    /// `ShmemPmdMapped` + `FilePmdMapped`, bytes: file THPs mapped by a PMD,
    /// which have no PTE table at all.
    pub file_pmd_mapped: u64,
    /// `Private_Hugetlb` + `Shared_Hugetlb`, bytes: hugetlb pages are not in
    /// `Rss`.
    pub hugetlb: u64,
    /// The `VmFlags` the estimate cares about.
    pub flags: VmFlags,
}

impl Mapping {
    /// The label shown for the mapping.
    pub fn label(&self) -> &str {
        if self.name.is_empty() {
            "[anon]"
        } else {
            &self.name
        }
    }

    /// Whether smaps proves the mapping has no page-table entry worth
    /// reading: nothing resident, nothing swapped, and none of the mapping
    /// kinds whose entries smaps does not count (raw PFN and mixed maps,
    /// userfaultfd write-protect markers).
    pub fn provably_empty(&self) -> bool {
        self.rss == Some(0) && self.swap == Some(0) && !self.is_special()
    }

    /// Hugetlb mappings are mapped by PMD or PUD entries, never by PTE tables.
    pub fn is_hugetlb(&self, page_size: u64) -> bool {
        self.flags.hugetlb || self.kernel_page_size.is_some_and(|size| size > page_size)
    }

    pub fn size(&self) -> u64 {
        self.end - self.start
    }

    /// What smaps proves (nothing, for a mapping read from `maps`).
    pub fn kind(&self, geometry: Geometry) -> Kind {
        // The vsyscall page is above the user address space: pagemap has no
        // entries for it.
        if self.name == "[vsyscall]" {
            return Kind::Outside;
        }
        if self.is_hugetlb(geometry.page_size) {
            let leaf = Leaf::for_page_size(geometry, self.kernel_page_size.unwrap_or(geometry.span()));
            let fill = match self.hugetlb {
                0 if self.rss.is_some() => Fill::Empty,
                bytes if bytes >= self.size() => Fill::Full,
                _ => Fill::Partial,
            };
            return Kind::Hugetlb { leaf, fill };
        }
        if self.provably_empty() {
            Kind::Empty
        } else if self.provably_resident() {
            Kind::Resident
        } else {
            Kind::Unknown
        }
    }

    /// Every page resident (`Rss` = size), and not a mapping whose entries
    /// smaps does not count. Any span the mapping touches then has a page.
    fn provably_resident(&self) -> bool {
        self.rss.is_some_and(|rss| rss >= self.size()) && self.size() > 0 && !self.is_special()
    }

    /// `Rss` + `Swap` in pages: no more spans of the mapping than this can
    /// hold an entry. None when smaps did not say, or for mappings with
    /// entries smaps does not count.
    pub fn max_spans_with_entries(&self, geometry: Geometry) -> Option<u64> {
        if self.is_special() {
            return None;
        }
        Some((self.rss? + self.swap?).div_ceil(geometry.page_size))
    }

    /// Raw PFN and mixed maps, userfaultfd write-protect markers, hugetlb:
    /// their entries are not (all) in `Rss` and `Swap`.
    fn is_special(&self) -> bool {
        let f = self.flags;
        f.pfn_or_io || f.mixed || f.uffd_wp || f.hugetlb
    }
}

/// The `VmFlags` of smaps that change what the counters prove. Kept as
/// booleans: smaps is parsed for every process at every refresh, and a
/// string per flag per mapping cost more than reading the file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmFlags {
    /// `pf` (raw PFN map) or `io` (memory-mapped I/O): entries without
    /// pages, not in `Rss`.
    pub pfn_or_io: bool,
    /// `mm`: mixed map, the same.
    pub mixed: bool,
    /// `uw`: userfaultfd write-protect, whose markers keep entries without
    /// a page.
    pub uffd_wp: bool,
    /// `ht`: hugetlb.
    pub hugetlb: bool,
}

impl VmFlags {
    pub fn parse(text: &str) -> Self {
        let mut flags = Self::default();
        for flag in text.split_ascii_whitespace() {
            match flag {
                "pf" | "io" => flags.pfn_or_io = true,
                "mm" => flags.mixed = true,
                "uw" => flags.uffd_wp = true,
                "ht" => flags.hugetlb = true,
                _ => {}
            }
        }
        flags
    }
}

#[derive(Debug, thiserror::Error)]
#[error("line {line_no}: unexpected {line:?}")]
pub struct ParseError {
    pub line_no: usize,
    pub line: String,
}

/// Parse the text of `/proc/PID/smaps` (or `/proc/PID/maps`, which gives
/// mappings without counters).
pub fn parse_smaps(text: &str) -> Result<Vec<Mapping>, ParseError> {
    let mut mappings: Vec<Mapping> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let error = || ParseError { line_no: index + 1, line: line.to_owned() };
        // Counter lines (`Rss:  8 kB`) outnumber mapping lines twenty to
        // one: tell them apart by a key without spaces before the colon.
        let counter = line.split_once(':').filter(|(key, _)| !key.contains(' '));
        let Some((key, value)) = counter else {
            mappings.push(parse_header(line).ok_or_else(error)?);
            continue;
        };
        let current = mappings.last_mut().ok_or_else(error)?;
        let bytes = || parse_kib(value).map(|kib| kib * 1024);
        match key {
            "KernelPageSize" => current.kernel_page_size = bytes(),
            "Rss" => current.rss = bytes(),
            "Swap" => current.swap = bytes(),
            "AnonHugePages" => current.anon_huge = bytes().unwrap_or(0),
            "ShmemPmdMapped" | "FilePmdMapped" => current.file_pmd_mapped += bytes().unwrap_or(0),
            "Private_Hugetlb" | "Shared_Hugetlb" => current.hugetlb += bytes().unwrap_or(0),
            "VmFlags" => current.flags = VmFlags::parse(value),
            // Other counters are not needed; new kernels add more.
            _ => {}
        }
    }
    Ok(mappings)
}

/// `start-end perms offset dev inode   name`; `None` if the line is not one.
fn parse_header(line: &str) -> Option<Mapping> {
    let mut fields = line.splitn(6, ' ');
    let (start, end) = fields.next()?.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    let perms = fields.next()?;
    let _offset = fields.next()?;
    let _device = fields.next()?;
    let _inode = fields.next()?;
    // The name is padded to a column with spaces; paths may hold spaces.
    let name = fields.next().unwrap_or("").trim_start().to_owned();
    if end < start || perms.len() != 4 {
        return None;
    }
    Some(Mapping { start, end, perms: perms.to_owned(), name, ..Mapping::default() })
}

fn parse_kib(value: &str) -> Option<u64> {
    value.trim().strip_suffix("kB")?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c6a00000-55d0c6a21000 rw-p 00000000 00:00 0                          [heap]
Size:                132 kB
KernelPageSize:        4 kB
Rss:                   8 kB
Swap:                  0 kB
AnonHugePages:         0 kB
VmFlags: rd wr mr mw me ac sd
7f0000000000-7f0010400000 rw-p 00000000 00:00 0 
Size:             266240 kB
KernelPageSize:        4 kB
Rss:                   0 kB
Swap:                  0 kB
AnonHugePages:      4096 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:      2048 kB
VmFlags: rd wr mr mw me nr nh
7f2000000000-7f2000200000 r--s 00000000 00:10 12 /dev/hugepages/my file (deleted)
KernelPageSize:     2048 kB
Rss:                   0 kB
Shared_Hugetlb:     2048 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
VmFlags: rd sh mr mw me ms de ht
7f3000000000-7f3000400000 rw-p 00000000 00:00 0 
Size:               4096 kB
KernelPageSize:        4 kB
Rss:                4096 kB
Swap:                  0 kB
VmFlags: rd wr mr mw me ac
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
Rss:                   0 kB
";

    #[test]
    fn parses_mappings_and_counters() {
        let maps = parse_smaps(SMAPS).expect("parse");
        assert_eq!(maps.len(), 5);
        assert_eq!(maps[0].name, "[heap]");
        assert_eq!((maps[0].start, maps[0].end), (0x55d0c6a00000, 0x55d0c6a21000));
        assert_eq!(maps[0].rss, Some(8192));
        assert!(!maps[0].provably_empty());
        assert_eq!(maps[1].label(), "[anon]");
        assert_eq!(maps[1].anon_huge, 4 << 20);
        assert_eq!(maps[1].file_pmd_mapped, 2 << 20);
        assert!(maps[1].provably_empty());
        assert_eq!(maps[2].name, "/dev/hugepages/my file (deleted)");
        assert!(maps[2].is_hugetlb(4096));
        assert!(!maps[2].provably_empty(), "hugetlb pages are not in Rss");
        assert!(!maps[1].is_hugetlb(4096));
        // No Swap line: not provably empty.
        assert_eq!(maps[4].swap, None);
        assert!(!maps[4].provably_empty());
    }

    #[test]
    fn kinds_follow_from_the_counters() {
        let geo = Geometry { page_size: 4096 };
        let maps = parse_smaps(SMAPS).expect("parse");
        assert_eq!(maps[0].kind(geo), Kind::Unknown, "8 kB of 132 kB resident");
        assert_eq!(maps[0].max_spans_with_entries(geo), Some(2));
        assert_eq!(maps[1].kind(geo), Kind::Empty);
        assert_eq!(maps[2].kind(geo), Kind::Hugetlb { leaf: Leaf::Pmd, fill: Fill::Full });
        assert_eq!(maps[2].max_spans_with_entries(geo), None);
        assert_eq!(maps[3].kind(geo), Kind::Resident);
        assert_eq!(maps[4].kind(geo), Kind::Outside);
        // From /proc/PID/maps: no counters, nothing proved.
        let plain = parse_smaps("7f3000000000-7f3000400000 rw-p 00000000 00:00 0\n").expect("parse");
        assert_eq!(plain[0].kind(geo), Kind::Unknown);
        assert_eq!(plain[0].max_spans_with_entries(geo), None);
        let mut partial = maps[2].clone();
        partial.hugetlb = 0;
        assert_eq!(partial.kind(geo), Kind::Hugetlb { leaf: Leaf::Pmd, fill: Fill::Empty });
        partial.hugetlb = 4096;
        partial.end += 2 << 20;
        assert_eq!(partial.kind(geo), Kind::Hugetlb { leaf: Leaf::Pmd, fill: Fill::Partial });
    }

    #[test]
    fn maps_without_counters_parse() {
        let maps =
            parse_smaps("00400000-00452000 r-xp 00000000 08:02 173521      /usr/bin/dbus-daemon\n").expect("parse");
        assert_eq!(maps[0].name, "/usr/bin/dbus-daemon");
        assert!(!maps[0].provably_empty());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse_smaps("Rss: 4 kB\n").is_err(), "a counter before any mapping");
        assert!(parse_smaps("zzzz\n").is_err());
        assert!(parse_smaps("1000-0 rw-p 0 0:0 0\n").is_err(), "end before start");
    }
}
