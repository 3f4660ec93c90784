//! The arithmetic of the estimate, apart from any I/O so that it can be
//! tested on made-up address spaces: which page-table pages a process needs
//! for what it has mapped, and how many of the ones it has are therefore
//! empty.

/// Page-table geometry from the base page size: a table is one page of
/// 8-byte entries (x86_64 and arm64 with 4 KiB pages: 512 entries, a PTE
/// table spans 2 MiB, a PMD table 1 GiB, a PUD table 512 GiB).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub page_size: u64,
}

impl Geometry {
    pub fn entries(self) -> u64 {
        self.page_size / 8
    }

    /// Address space one PTE table maps.
    pub fn span(self) -> u64 {
        self.page_size * self.entries()
    }

    /// Address space one PMD table maps.
    pub fn pmd_reach(self) -> u64 {
        self.span() * self.entries()
    }

    /// Address space one PUD table maps.
    pub fn pud_reach(self) -> u64 {
        self.pmd_reach() * self.entries()
    }

    /// Aligned spans lying completely inside `[start, end)`.
    pub fn full_spans(self, start: u64, end: u64) -> u64 {
        let span = self.span();
        let first = start.div_ceil(span);
        let last = end / span;
        last.saturating_sub(first)
    }
}

/// The level whose entries map a mapping's pages: ordinary pages need a PTE
/// table; 2 MiB hugetlb pages sit in the PMD table, 1 GiB ones in the PUD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leaf {
    Pte,
    Pmd,
    Pud,
}

impl Leaf {
    pub fn for_page_size(geometry: Geometry, kernel_page_size: u64) -> Self {
        if kernel_page_size >= geometry.pmd_reach() {
            Self::Pud
        } else if kernel_page_size >= geometry.span() {
            Self::Pmd
        } else {
            Self::Pte
        }
    }
}

/// Page-table pages needed, counted once each. Spans must be added in
/// ascending address order (mappings in `/proc/PID/maps` order), which lets
/// a span shared by two small mappings count once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Needed {
    pub pte: u64,
    pub pmd: u64,
    pub pud: u64,
    last_pte: Option<u64>,
    last_pmd: Option<u64>,
    last_pud: Option<u64>,
}

impl Needed {
    /// The span holding `addr` has a present or swapped page mapped at `leaf`.
    pub fn add(&mut self, geometry: Geometry, addr: u64, leaf: Leaf) {
        fn count(counter: &mut u64, last: &mut Option<u64>, index: u64) {
            if *last != Some(index) {
                *last = Some(index);
                *counter += 1;
            }
        }
        if leaf == Leaf::Pte {
            count(&mut self.pte, &mut self.last_pte, addr / geometry.span());
        }
        if leaf != Leaf::Pud {
            count(&mut self.pmd, &mut self.last_pmd, addr / geometry.pmd_reach());
        }
        count(&mut self.pud, &mut self.last_pud, addr / geometry.pud_reach());
    }

    /// `spans` of the counted spans are mapped by a PMD (file or shmem THP)
    /// and have no PTE table.
    pub fn remove_pte(&mut self, spans: u64) {
        self.pte = self.pte.saturating_sub(spans);
    }

    pub fn total(&self) -> u64 {
        self.pte + self.pmd + self.pud
    }
}

/// Page-table pages `VmPTE` accounts for.
pub fn tables_from_vmpte(vmpte_kib: u64, geometry: Geometry) -> u64 {
    vmpte_kib.saturating_mul(1024) / geometry.page_size
}

/// Tables the process has beyond what it needs: the empty ones.
pub fn waste(tables: u64, needed: u64) -> u64 {
    tables.saturating_sub(needed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GEO: Geometry = Geometry { page_size: 4096 };
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn x86_64_geometry() {
        assert_eq!(GEO.span(), 2 * MIB);
        assert_eq!(GEO.pmd_reach(), GIB);
        assert_eq!(GEO.pud_reach(), 512 * GIB);
        assert_eq!(GEO.full_spans(0, 2 * MIB), 1);
        assert_eq!(GEO.full_spans(4096, 4 * MIB), 1);
        assert_eq!(GEO.full_spans(4096, 4 * MIB - 4096), 0);
        assert_eq!(GEO.full_spans(4 * MIB, 4096), 0, "empty or reversed range");
        assert_eq!(Leaf::for_page_size(GEO, 4096), Leaf::Pte);
        assert_eq!(Leaf::for_page_size(GEO, 2 * MIB), Leaf::Pmd);
        assert_eq!(Leaf::for_page_size(GEO, GIB), Leaf::Pud);
    }

    #[test]
    fn spans_shared_by_mappings_count_once() {
        let mut needed = Needed::default();
        // Two small mappings in one span, one more span, then a span in the
        // next GiB and one in the next 512 GiB.
        needed.add(GEO, 0x1000, Leaf::Pte);
        needed.add(GEO, 0x5000, Leaf::Pte);
        needed.add(GEO, 2 * MIB, Leaf::Pte);
        needed.add(GEO, GIB + 4096, Leaf::Pte);
        needed.add(GEO, 512 * GIB, Leaf::Pte);
        assert_eq!((needed.pte, needed.pmd, needed.pud), (4, 3, 2));
        assert_eq!(needed.total(), 9);
    }

    #[test]
    fn hugetlb_needs_no_pte_table() {
        let mut needed = Needed::default();
        needed.add(GEO, 0, Leaf::Pmd);
        needed.add(GEO, 2 * MIB, Leaf::Pmd);
        needed.add(GEO, GIB, Leaf::Pud);
        assert_eq!((needed.pte, needed.pmd, needed.pud), (0, 1, 1));
    }

    #[test]
    fn waste_is_vmpte_minus_needed_never_negative() {
        // The workload of the tests on a kernel without PT_RECLAIM: 128 empty
        // tables plus 1 PMD table next to a process needing 10 tables.
        let tables = tables_from_vmpte((128 + 1 + 10) * 4, GEO);
        assert_eq!(tables, 139);
        assert_eq!(waste(tables, 10), 129);
        assert_eq!(waste(3, 10), 0, "a process growing during the scan");
        assert_eq!(tables_from_vmpte(u64::MAX, GEO), u64::MAX / 4096);
        let mut needed = Needed::default();
        needed.add(GEO, 0, Leaf::Pte);
        needed.remove_pte(5);
        assert_eq!(needed.pte, 0);
    }
}
