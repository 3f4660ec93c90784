//! Debian's index formats and version order, as pure functions: deb822
//! stanzas (`apt-cache show`, `*.sources`), the `Depends` field, and
//! `dpkg --compare-versions`. Kernel resolution builds on these; keeping
//! them free of I/O is what lets them be unit-tested.

use std::cmp::Ordering;

/// One `apt-cache show` stanza, only the fields kernel resolution uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PackageInfo {
    pub name: String,
    pub version: String,
    /// First alternative of each `Depends` group, with the version when the
    /// relation is `=`.
    pub depends: Vec<(String, Option<String>)>,
}

/// RFC822-style stanzas: `Key: value`, continuation lines start with
/// whitespace, `#` comments, blank lines separate stanzas.
pub fn parse_deb822(text: &str) -> Vec<Vec<(String, String)>> {
    let mut stanzas = Vec::new();
    let mut cur: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            if !cur.is_empty() {
                stanzas.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = cur.last_mut() {
                v.push('\n');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            cur.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    if !cur.is_empty() {
        stanzas.push(cur);
    }
    stanzas
}

/// `apt-cache show` output → packages (name, version, parsed Depends).
pub fn parse_stanzas(text: &str) -> Vec<PackageInfo> {
    parse_deb822(text)
        .into_iter()
        .filter_map(|fields| {
            let get = |k: &str| fields.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
            Some(PackageInfo {
                name: get("Package")?,
                version: get("Version")?,
                depends: get("Depends").map(|d| parse_depends(&d)).unwrap_or_default(),
            })
        })
        .collect()
}

/// `a (= 1), b | c (>= 2)` → `[(a, Some(1)), (b, None)]`: first alternative
/// only, version kept only for `=`.
pub fn parse_depends(field: &str) -> Vec<(String, Option<String>)> {
    field
        .split(',')
        .filter_map(|group| {
            let alt = group.split('|').next()?.trim();
            let (name, rest) = match alt.find([' ', '(']) {
                Some(i) => (&alt[..i], alt[i..].trim()),
                None => (alt, ""),
            };
            let name = name.split(':').next()?.trim();
            if name.is_empty() {
                return None;
            }
            let version = rest
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .and_then(|r| r.trim().strip_prefix('='))
                .filter(|r| !r.starts_with(['<', '>', '=']))
                .map(|v| v.trim().to_string());
            Some((name.to_string(), version))
        })
        .collect()
}

/// Debian version ordering (`dpkg --compare-versions`): epoch, upstream,
/// revision; `~` sorts before everything, letters before other symbols,
/// digit runs compare numerically.
pub fn version_cmp(a: &str, b: &str) -> Ordering {
    fn split(v: &str) -> (u64, &str, &str) {
        let (epoch, rest) = match v.split_once(':') {
            Some((e, r)) if e.chars().all(|c| c.is_ascii_digit()) => (e.parse().unwrap_or(0), r),
            _ => (0, v),
        };
        match rest.rsplit_once('-') {
            Some((up, rev)) => (epoch, up, rev),
            None => (epoch, rest, ""),
        }
    }
    fn order(c: Option<u8>) -> i32 {
        match c {
            None => 0,
            Some(c) if c.is_ascii_digit() => 0,
            Some(b'~') => -1,
            Some(c) if c.is_ascii_alphabetic() => i32::from(c),
            Some(c) => i32::from(c) + 256,
        }
    }
    fn part(a: &str, b: &str) -> Ordering {
        let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
        while !a.is_empty() || !b.is_empty() {
            while a.first().is_some_and(|c| !c.is_ascii_digit()) || b.first().is_some_and(|c| !c.is_ascii_digit()) {
                let (ca, cb) = (
                    a.first().copied().filter(|c| !c.is_ascii_digit()),
                    b.first().copied().filter(|c| !c.is_ascii_digit()),
                );
                let (oa, ob) = (order(ca), order(cb));
                if oa != ob {
                    return oa.cmp(&ob);
                }
                if ca.is_some() {
                    a = &a[1..];
                }
                if cb.is_some() {
                    b = &b[1..];
                }
            }
            let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
            let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
            let strip = |s: &[u8]| {
                let z = s.iter().take_while(|c| **c == b'0').count();
                s[z..].to_vec()
            };
            let (na, nb) = (strip(&a[..da]), strip(&b[..db]));
            let ord = na.len().cmp(&nb.len()).then_with(|| na.cmp(&nb));
            if ord != Ordering::Equal {
                return ord;
            }
            a = &a[da..];
            b = &b[db..];
        }
        Ordering::Equal
    }
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb).then_with(|| part(ua, ub)).then_with(|| part(ra, rb))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a test fails with the error it unwraps")]
mod tests {
    use super::*;

    #[test]
    fn version_order() {
        let lt = |a: &str, b: &str| {
            assert_eq!(version_cmp(a, b), Ordering::Less, "{a} < {b}");
            assert_eq!(version_cmp(b, a), Ordering::Greater, "{b} > {a}");
        };
        lt("6.18.12-1~bpo13+1", "6.18.15-1~bpo13+1");
        lt("6.19.14-1~bpo13+1", "7.0.4-1~bpo13+1");
        lt("7.2.9-1~bpo13+1", "7.2.13-1");
        lt("7.2.13-1~bpo13+1", "7.2.13-1");
        lt("6.1.176-1", "1:6.1.0-1");
        lt("1.0~rc1", "1.0");
        lt("1.0", "1.0a");
        lt("1.0a", "1.0+");
        lt("1.0", "1.0-1");
        // Debian's kernel ABI bumps: 6.12.115+deb13.1 is newer than 6.12.115+deb13.
        lt("6.12.115-1", "6.12.115-1+deb13u1");
        lt("5.10.244-1", "5.10.251-1");
        assert_eq!(version_cmp("1.0-0", "1.0"), Ordering::Equal);
        assert_eq!(version_cmp("01.2", "1.2"), Ordering::Equal);
    }

    #[test]
    fn depends() {
        let d = parse_depends(
            "dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, kmod, \
             linux-binary-7.2.13+deb14-cloud-amd64 (= 7.2.13-1), python3:any",
        );
        assert_eq!(
            d,
            vec![
                ("dracut".to_string(), None),
                ("kmod".to_string(), None),
                ("linux-binary-7.2.13+deb14-cloud-amd64".to_string(), Some("7.2.13-1".to_string())),
                ("python3".to_string(), None),
            ]
        );
    }

    #[test]
    fn stanzas() {
        let text = "Package: linux-image-7.3.4+deb13-cloud-arm64\nVersion: 7.3.4-1~bpo13+1\n\
            Depends: linux-binary-7.3.4+deb13-cloud-arm64 (= 7.3.4-1~bpo13+1),\n linux-modules-7.3.4+deb13-cloud-arm64 (= 7.3.4-1~bpo13+1)\n\
            Description: Linux 7.3.4 for arm64 cloud\n\n# a comment\nPackage: broken\n\n\
            Package: linux-base-7.3.4+deb13-cloud-arm64\nVersion: 7.3.4-1~bpo13+1\n";
        let p = parse_stanzas(text);
        assert_eq!(p.len(), 2, "a stanza without Version is dropped: {p:?}");
        assert_eq!(p[0].depends.len(), 2, "continuation lines belong to the field");
        assert_eq!(p[0].depends[1].0, "linux-modules-7.3.4+deb13-cloud-arm64");
        assert_eq!(p[1].name, "linux-base-7.3.4+deb13-cloud-arm64");
    }
}
