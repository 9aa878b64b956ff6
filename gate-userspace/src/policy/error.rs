//! Policy errors, each pointing at the offending value as `FILE:LINE:COLUMN`.
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// A 1-based line and column in a policy file (the column counts characters, not bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl Pos {
    /// The position of byte `offset` in `source` (clamped to its end and to a char boundary).
    /// Scans the text before it: for many positions in one file, use [`LineIndex`].
    pub fn from_offset(source: &str, offset: usize) -> Pos {
        LineIndex::new(source).pos(offset)
    }
}

/// Where each line of a source text starts, to turn byte offsets into positions in
/// O(log lines + line length) (a 10,000-rule policy has tens of thousands of values to place).
pub struct LineIndex<'a> {
    source: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub fn new(source: &'a str) -> Self {
        let starts = std::iter::once(0)
            .chain(source.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { source, starts }
    }

    /// The position of byte `offset` (clamped to the end and to a char boundary).
    pub fn pos(&self, offset: usize) -> Pos {
        let mut offset = offset.min(self.source.len());
        while !self.source.is_char_boundary(offset) {
            offset -= 1;
        }
        // The last line start at or before `offset`.
        let line = self.starts.partition_point(|&s| s <= offset);
        let line_start = self.starts[line - 1];
        let col = self.source[line_start..offset].chars().count() + 1;
        Pos {
            line: saturate(line),
            col: saturate(col),
        }
    }
}

fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// A position in a named policy file; displays as `FILE:LINE:COLUMN`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub pos: Pos,
}

impl Location {
    /// `pos` in `file`.
    pub fn new(file: &Path, pos: Pos) -> Location {
        Location {
            file: file.to_path_buf(),
            pos,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.pos)
    }
}

/// Everything that can make a policy unusable. Any error means nothing was compiled.
///
/// Every variant but [`PolicyError::Read`] carries the [`Location`] of the offending value and
/// displays as `FILE:LINE:COLUMN: message`.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The policy file could not be read.
    #[error("{}: cannot read policy: {source}", file.display())]
    Read { file: PathBuf, source: io::Error },
    /// Malformed TOML, a missing or unknown key, a value of the wrong type or an unknown name
    /// (mode, op, decision…), as reported by the TOML parser.
    #[error("{at}: {message}")]
    Syntax { at: Location, message: String },
    /// `version` is not 1.
    #[error("{at}: unsupported policy version {found}, this gate supports version 1")]
    Version { at: Location, found: i64 },
    /// A value is out of its allowed form (empty name, bad rule id, empty list…).
    #[error("{at}: {message}")]
    Invalid { at: Location, message: String },
    /// Two rules share an id.
    #[error("{at}: duplicate rule id `{id}` (first defined at {first})")]
    DuplicateId {
        at: Location,
        id: String,
        first: Pos,
    },
    /// A key that does not fit the rule's op (`path` on a connect rule, `addr`/`port` on a file
    /// rule), or a key the op needs is missing.
    #[error("{at}: {message}")]
    WrongField { at: Location, message: String },
    /// A path pattern with a wildcard other than one trailing `/**`.
    #[error("{at}: unsupported glob `{pattern}`, only a trailing /** is supported")]
    UnsupportedGlob { at: Location, pattern: String },
    /// A `${…}` variable that does not exist, or `${workspace}` without a workspace.
    #[error("{at}: {message}")]
    Variable { at: Location, message: String },
    /// A path that is not absolute once its variables are substituted.
    #[error("{at}: path `{path}` is not absolute (after substitution)")]
    NotAbsolute { at: Location, path: String },
    /// A malformed address or CIDR.
    #[error("{at}: bad address `{value}`: {reason}")]
    BadAddress {
        at: Location,
        value: String,
        reason: String,
    },
    /// A malformed port or port range.
    #[error("{at}: bad port range `{value}`: {reason}")]
    BadPort {
        at: Location,
        value: String,
        reason: String,
    },
    /// A `dir/**` pattern whose `dir` is not a directory.
    #[error("{at}: `{path}` is not a directory, so `{pattern}` cannot match anything below it")]
    NotDirectory {
        at: Location,
        path: PathBuf,
        pattern: String,
    },
    /// A path that exists but could not be resolved (other than "does not exist"), or a
    /// `${workspace}` that does not exist.
    #[error("{at}: cannot resolve `{}`: {source}", path.display())]
    Resolve {
        at: Location,
        path: PathBuf,
        source: io::Error,
    },
    /// One address prefix would carry more port ranges than the kernel map value holds.
    #[error(
        "{at}: prefix {prefix} collects {count} port ranges (at most {max}) from rules {rules}"
    )]
    TooManyPortRules {
        at: Location,
        prefix: String,
        count: usize,
        max: usize,
        rules: String,
    },
    /// More rules than a rule index (u16, with reserved values at the top) can number.
    #[error("{at}: {count} rules, at most {max} are supported")]
    TooManyRules {
        at: Location,
        count: usize,
        max: usize,
    },
}

impl PolicyError {
    /// Where in the policy the error is, if it points into the file.
    pub fn location(&self) -> Option<&Location> {
        use PolicyError::*;
        match self {
            Read { .. } => None,
            Syntax { at, .. }
            | Version { at, .. }
            | Invalid { at, .. }
            | DuplicateId { at, .. }
            | WrongField { at, .. }
            | UnsupportedGlob { at, .. }
            | Variable { at, .. }
            | NotAbsolute { at, .. }
            | BadAddress { at, .. }
            | BadPort { at, .. }
            | NotDirectory { at, .. }
            | Resolve { at, .. }
            | TooManyPortRules { at, .. }
            | TooManyRules { at, .. } => Some(at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Pos;

    #[test]
    fn offsets_become_one_based_lines_and_char_columns() {
        let s = "ab\ncdé = 1\n";
        assert_eq!(Pos::from_offset(s, 0), Pos { line: 1, col: 1 });
        assert_eq!(Pos::from_offset(s, 2), Pos { line: 1, col: 3 });
        assert_eq!(Pos::from_offset(s, 3), Pos { line: 2, col: 1 });
        // 'é' is two bytes: the '=' after it is the 5th character of line 2.
        assert_eq!(Pos::from_offset(s, 8), Pos { line: 2, col: 5 });
        assert_eq!(Pos::from_offset(s, 1000), Pos { line: 3, col: 1 });
        // Inside a two-byte character: clamped back to its start.
        assert_eq!(Pos::from_offset(s, 6), Pos { line: 2, col: 3 });
        assert_eq!(Pos::from_offset("", 0), Pos { line: 1, col: 1 });
        assert_eq!(Pos::from_offset("\n\n", 2), Pos { line: 3, col: 1 });
    }
}
