//! What artefacts are called: the suffixes, the temp-name grammar and the single-segment rule.
//!
//! This is the one definition of the store's file names. The binding exports the suffixes to
//! Python, whose key rules build on them; the commit, the temp lifecycle and the sweep use the
//! helpers below and never spell a suffix themselves.

use crate::error::{Error, Result};

/// Suffix of a stored payload: `<key>.npy`.
pub const NPY_SUFFIX: &str = ".npy";
/// Suffix of a stored sidecar: `<key>.meta.json`.
pub const META_SUFFIX: &str = ".meta.json";
/// Suffix of an entry's memory-mapped working file: `<name>.dat`.
pub const MEMMAP_SUFFIX: &str = ".dat";
/// Suffix of a temp that will be renamed over the name it extends: `<name>.tmp`.
pub const TMP_SUFFIX: &str = ".tmp";
/// Suffix of a pickled container written by the original implementation: `<key>.pkl`. Never
/// written here; a store only recognises and removes it.
pub const LEGACY_PICKLE_SUFFIX: &str = ".pkl";

/// The artefacts whose temps the core writes, hence the only temps a sweep may remove.
const TEMP_TARGET_SUFFIXES: [&str; 3] = [NPY_SUFFIX, META_SUFFIX, MEMMAP_SUFFIX];

/// Checks that `name` is one path segment: non-empty, no `/`, no NUL, not `.` or `..`.
///
/// # Errors
/// [`Error::InvalidName`].
pub fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "empty name"
    } else if name.contains('/') {
        "contains '/'"
    } else if name.contains('\0') {
        "contains NUL"
    } else if name == "." || name == ".." {
        "is a relative directory reference"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName {
        name: name.to_owned(),
        reason,
    })
}

/// The temp name of `name`: where its next content is written before the rename.
pub fn temp_name(name: &str) -> String {
    format!("{name}{TMP_SUFFIX}")
}

/// Whether `name` is a temp of ours: `<stem>.npy.tmp`, `<stem>.meta.json.tmp` or
/// `<stem>.dat.tmp` with a non-empty single-segment stem. Callers with a stricter key rule
/// apply it on top.
pub fn is_temp_name(name: &str) -> bool {
    if name.contains('/') || name.contains('\0') {
        return false;
    }
    name.strip_suffix(TMP_SUFFIX).is_some_and(|target| {
        TEMP_TARGET_SUFFIXES
            .iter()
            .any(|suffix| target.strip_suffix(suffix).is_some_and(|stem| !stem.is_empty()))
    })
}

/// The key whose pair `name` is a temp of: `k` for `k.npy.tmp` and `k.meta.json.tmp`; `None`
/// for anything else (a `.dat.tmp` belongs to no pair).
pub fn pair_temp_key(name: &str) -> Option<&str> {
    let target = name.strip_suffix(TMP_SUFFIX)?;
    [NPY_SUFFIX, META_SUFFIX]
        .iter()
        .find_map(|suffix| target.strip_suffix(suffix))
        .filter(|stem| !stem.is_empty() && validate_name(stem).is_ok())
}

/// The two names a store key is committed under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairNames {
    /// `<key>.npy`.
    pub npy: String,
    /// `<key>.meta.json`.
    pub meta: String,
}

impl PairNames {
    /// The names of `key`'s pair.
    ///
    /// # Errors
    /// [`Error::InvalidName`] when `key` is not a single path segment.
    pub fn of(key: &str) -> Result<Self> {
        validate_name(key)?;
        Ok(Self {
            npy: format!("{key}{NPY_SUFFIX}"),
            meta: format!("{key}{META_SUFFIX}"),
        })
    }
}

#[cfg(test)]
// Tests state their expectations with unwrap/expect/panic; the workspace denies them elsewhere.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn reason_of(name: &str) -> Option<&'static str> {
        match validate_name(name) {
            Ok(()) => None,
            Err(Error::InvalidName { name: reported, reason }) => {
                assert_eq!(reported, name);
                Some(reason)
            }
            Err(other) => panic!("{name:?}: expected InvalidName, got {other:?}"),
        }
    }

    #[test]
    fn validate_name_refuses_anything_but_one_path_segment() {
        let cases = [
            ("", "empty name"),
            (".", "is a relative directory reference"),
            ("..", "is a relative directory reference"),
            ("/", "contains '/'"),
            ("/abs", "contains '/'"),
            ("a/b", "contains '/'"),
            ("trailing/", "contains '/'"),
            ("../up", "contains '/'"),
            ("\0", "contains NUL"),
            ("a\0b", "contains NUL"),
            ("k.npy\0", "contains NUL"),
        ];
        for (name, reason) in cases {
            assert_eq!(reason_of(name), Some(reason), "{name:?}");
        }
    }

    #[test]
    fn validate_name_accepts_legal_segments_of_any_script_and_length() {
        let long = "k".repeat(255);
        let longer = "é".repeat(300);
        let legal = [
            "k.npy",
            "...",
            ".hidden",
            "..a",
            "a..",
            " ",
            "key with spaces.meta.json",
            "θ-ключ-鍵-🔑.npy",
            "back\\slash",
            "new\nline",
            &long,
            // Length is the filesystem's business (ENAMETOOLONG), not a name rule.
            &longer,
        ];
        for name in legal {
            assert_eq!(reason_of(name), None, "{name:?}");
        }
    }

    #[test]
    fn suffixes_are_the_documented_spellings() {
        assert_eq!(
            [NPY_SUFFIX, META_SUFFIX, MEMMAP_SUFFIX, TMP_SUFFIX, LEGACY_PICKLE_SUFFIX],
            [".npy", ".meta.json", ".dat", ".tmp", ".pkl"]
        );
    }

    #[test]
    fn temp_name_appends_the_temp_suffix() {
        assert_eq!(temp_name("k.npy"), "k.npy.tmp");
        assert_eq!(temp_name("k.meta.json"), "k.meta.json.tmp");
        assert_eq!(temp_name("θ"), format!("θ{TMP_SUFFIX}"));
    }

    #[test]
    fn is_temp_name_accepts_exactly_our_temp_grammar() {
        let cases = [
            ("k.npy.tmp", true),
            ("k.meta.json.tmp", true),
            ("k.dat.tmp", true),
            ("θ-ключ.npy.tmp", true),
            ("a.npy.npy.tmp", true),
            // The stem rule is only "non-empty": the caller's key rule is applied on top.
            ("..npy.tmp", true),
            (" .dat.tmp", true),
            (".npy.tmp", false),
            (".meta.json.tmp", false),
            (".dat.tmp", false),
            ("k.npy", false),
            ("k.meta.json", false),
            ("k.tmp", false),
            ("k.json.tmp", false),
            ("k.pkl.tmp", false),
            ("k.npy.tmp.bak", false),
            ("k.NPY.TMP", false),
            ("k.npy.tmp ", false),
            ("sub/k.npy.tmp", false),
            ("/k.dat.tmp", false),
            ("k\0.npy.tmp", false),
            ("", false),
        ];
        for (name, swept) in cases {
            assert_eq!(is_temp_name(name), swept, "{name:?}");
        }
    }

    #[test]
    fn pair_temp_key_names_the_key_of_pair_temps_only() {
        let cases = [
            ("k.npy.tmp", Some("k")),
            ("k.meta.json.tmp", Some("k")),
            ("a.npy.npy.tmp", Some("a.npy")),
            ("k.dat.tmp", None),
            (".npy.tmp", None),
            ("k.npy", None),
            ("k.json.tmp", None),
        ];
        for (name, key) in cases {
            assert_eq!(pair_temp_key(name), key, "{name:?}");
        }
    }

    #[test]
    fn every_temp_name_of_a_pair_is_a_temp_name() {
        let names = PairNames::of("k").unwrap();
        assert_eq!(names.npy, "k.npy");
        assert_eq!(names.meta, "k.meta.json");
        for name in [&names.npy, &names.meta, &format!("k{MEMMAP_SUFFIX}")] {
            assert!(is_temp_name(&temp_name(name)), "{name}");
            assert!(!is_temp_name(name), "{name}");
        }
    }

    #[test]
    fn pair_names_refuse_a_key_that_is_not_one_segment() {
        for key in ["", ".", "..", "a/b", "a\0b"] {
            assert!(matches!(PairNames::of(key), Err(Error::InvalidName { .. })), "{key:?}");
        }
    }
}
