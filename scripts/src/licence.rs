//! Copyleft licence checks: every script source names its licence in an
//! `SPDX-License-Identifier:` line, and the region accepts only licences on
//! its allow-list.
//!
//! The line may appear in any comment among the first [`HEADER_LINES_MAX`]
//! lines (`-- SPDX-License-Identifier: GPL-3.0-or-later`). The expression may
//! be a single identifier or several joined by `OR`/`AND` (with optional
//! parentheses); every identifier in it must be on the allow-list, so an
//! `OR` cannot smuggle in a permissive alternative.

/// Only this many lines from the top are searched for the licence line.
pub const HEADER_LINES_MAX: usize = 20;

/// The default allow-list: strong and weak copyleft licences.
/// It is the sim's default region setting, so the two cannot drift apart.
pub const DEFAULT_ALLOWED: &[&str] = metatopia_sim::state::DEFAULT_SCRIPT_LICENCES;

/// Why a source's licence is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LicenceError {
    /// No `SPDX-License-Identifier:` line near the top.
    #[error(
        "no SPDX-License-Identifier line in the first {HEADER_LINES_MAX} lines; add e.g. `-- SPDX-License-Identifier: AGPL-3.0-or-later` (accepted: {accepted})"
    )]
    Missing {
        /// The accepted identifiers, comma separated.
        accepted: String,
    },
    /// The line is there but its expression cannot be read.
    #[error("malformed SPDX-License-Identifier line ({reason}); accepted: {accepted}")]
    Malformed {
        /// What is wrong.
        reason: String,
        /// The accepted identifiers.
        accepted: String,
    },
    /// An identifier is not on the allow-list.
    #[error("licence {id:?} is not accepted in this region; accepted: {accepted}")]
    NotAllowed {
        /// The refused identifier.
        id: String,
        /// The accepted identifiers.
        accepted: String,
    },
}

/// The default allow-list as owned strings.
pub fn default_allowed() -> Vec<String> {
    DEFAULT_ALLOWED.iter().map(|s| s.to_string()).collect()
}

/// The identifiers a well-formed licence line names (empty if there is no
/// well-formed line). Used to re-check a loaded script against an
/// allow-list that changed.
pub fn ids(source: &str) -> Vec<String> {
    // With an empty allow-list a well-formed line is always "not allowed";
    // anything else means there is no well-formed line.
    if !matches!(
        check(source, &[] as &[&str]),
        Err(LicenceError::NotAllowed { .. })
    ) {
        return Vec::new();
    }
    let line = source
        .lines()
        .take(HEADER_LINES_MAX)
        .find_map(|l| l.split_once("SPDX-License-Identifier:").map(|(_, r)| r))
        .unwrap_or("");
    line.replace(['(', ')'], " ")
        .replace("]]", " ")
        .replace("*/", " ")
        .split_whitespace()
        .filter(|t| *t != "OR" && *t != "AND")
        .map(str::to_string)
        .collect()
}

/// Checks `source` against `allowed` and returns its licence expression.
///
/// Long on purpose: the licence line is parsed and checked clause by clause, each with its own error.
pub fn check<S: AsRef<str>>(source: &str, allowed: &[S]) -> Result<String, LicenceError> {
    let accepted = allowed
        .iter()
        .map(|s| s.as_ref())
        .collect::<Vec<_>>()
        .join(", ");
    const TAG: &str = "SPDX-License-Identifier:";
    let line = source
        .lines()
        .take(HEADER_LINES_MAX)
        .find_map(|l| l.find(TAG).map(|at| &l[at + TAG.len()..]));
    let Some(expr) = line else {
        return Err(LicenceError::Missing { accepted });
    };
    // A block comment may close on the same line.
    let expr = expr
        .trim()
        .trim_end_matches("]]")
        .trim_end_matches("*/")
        .trim();
    let malformed = |reason: &str| LicenceError::Malformed {
        reason: reason.to_string(),
        accepted: accepted.clone(),
    };
    if expr.is_empty() {
        return Err(malformed("no licence named"));
    }
    if expr.len() > 200 {
        return Err(malformed("expression longer than 200 characters"));
    }
    let spaced = expr.replace('(', " ( ").replace(')', " ) ");
    let mut expect_id = true;
    let mut depth = 0i32;
    let mut ids = Vec::new();
    for tok in spaced.split_whitespace() {
        match tok {
            "(" if expect_id => depth += 1,
            ")" if !expect_id => {
                depth -= 1;
                if depth < 0 {
                    return Err(malformed("unbalanced parentheses"));
                }
            }
            "OR" | "AND" if !expect_id => expect_id = true,
            "WITH" => return Err(malformed("licence exceptions (WITH) are not accepted")),
            id if expect_id => {
                let ok = id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '+');
                if !ok {
                    return Err(malformed(&format!("{id:?} is not an SPDX identifier")));
                }
                ids.push(id);
                expect_id = false;
            }
            other => return Err(malformed(&format!("unexpected {other:?}"))),
        }
    }
    if expect_id || depth != 0 {
        return Err(malformed("incomplete expression"));
    }
    for id in ids {
        if !allowed.iter().any(|a| a.as_ref() == id) {
            return Err(LicenceError::NotAllowed {
                id: id.to_string(),
                accepted,
            });
        }
    }
    Ok(expr.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_refuses() {
        let ok = "-- SPDX-License-Identifier: AGPL-3.0-or-later\nfunction on_touch() end\n";
        assert_eq!(check(ok, DEFAULT_ALLOWED).unwrap(), "AGPL-3.0-or-later");
        let both = "--[[ SPDX-License-Identifier: (MPL-2.0 OR GPL-3.0-only) ]]\n";
        assert_eq!(
            check(both, DEFAULT_ALLOWED).unwrap(),
            "(MPL-2.0 OR GPL-3.0-only)"
        );
        let mit = "-- SPDX-License-Identifier: MIT\n";
        let e = check(mit, DEFAULT_ALLOWED).unwrap_err();
        assert!(matches!(&e, LicenceError::NotAllowed { id, .. } if id == "MIT"));
        assert!(e.to_string().contains("GPL-3.0-or-later"), "{e}");
        let sneaky = "-- SPDX-License-Identifier: GPL-3.0-only OR MIT\n";
        assert!(matches!(
            check(sneaky, DEFAULT_ALLOWED),
            Err(LicenceError::NotAllowed { .. })
        ));
        let none = "function on_touch() end\n";
        let e = check(none, DEFAULT_ALLOWED).unwrap_err();
        assert!(matches!(e, LicenceError::Missing { .. }));
        assert!(e.to_string().contains("MPL-2.0"), "{e}");
        for bad in [
            "-- SPDX-License-Identifier:\n",
            "-- SPDX-License-Identifier: GPL-3.0-only OR\n",
            "-- SPDX-License-Identifier: (GPL-3.0-only\n",
            "-- SPDX-License-Identifier: GPL-3.0-only WITH Classpath-exception-2.0\n",
            "-- SPDX-License-Identifier: GPL 3\n",
            "-- SPDX-License-Identifier: \"GPL-3.0-only\"\n",
        ] {
            assert!(
                matches!(
                    check(bad, DEFAULT_ALLOWED),
                    Err(LicenceError::Malformed { .. })
                ),
                "{bad}"
            );
        }
        let late = format!("{}-- SPDX-License-Identifier: MPL-2.0\n", "--\n".repeat(30));
        assert!(matches!(
            check(&late, DEFAULT_ALLOWED),
            Err(LicenceError::Missing { .. })
        ));
        let only_mpl = ["MPL-2.0"];
        assert!(check("-- SPDX-License-Identifier: GPL-3.0-only\n", &only_mpl).is_err());
        assert_eq!(ids(both), ["MPL-2.0", "GPL-3.0-only"]);
        assert!(ids(none).is_empty());
        assert!(ids("-- SPDX-License-Identifier: GPL-3.0-only OR\n").is_empty());
    }
}
