//! `${name}` substitution in scenario text.

use std::collections::BTreeMap;

/// Known variables and their values.
#[derive(Clone, Debug, Default)]
pub struct Vars(BTreeMap<String, String>);

impl Vars {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set(&mut self, name: &str, value: impl Into<String>) -> &mut Self {
        self.0.insert(name.to_string(), value.into());
        self
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Replaces every `${name}` whose name is known. Unknown ones are an error when `strict`,
    /// else left as they are (shell text uses `${var}` for its own variables).
    pub fn expand(&self, s: &str, strict: bool) -> Result<String, String> {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                if strict {
                    return Err(format!("unterminated ${{ in {s:?}"));
                }
                out.push_str(&rest[start..]);
                return Ok(out);
            };
            let name = &after[..end];
            match self.0.get(name) {
                Some(v) => out.push_str(v),
                None if strict => {
                    let known: Vec<&str> = self.0.keys().map(String::as_str).collect();
                    return Err(format!(
                        "unknown variable ${{{name}}} in {s:?} (known: {})",
                        known.join(", ")
                    ));
                }
                None => out.push_str(&rest[start..start + 2 + end + 1]),
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        let mut v = Vars::new();
        v.set("workspace", "/tmp/ws").set("home", "/root");
        v
    }

    #[test]
    fn expands_known() {
        assert_eq!(
            vars().expand("${workspace}/..${home}/x", true).unwrap(),
            "/tmp/ws/../root/x"
        );
        assert_eq!(vars().expand("plain", true).unwrap(), "plain");
        assert_eq!(vars().expand("", true).unwrap(), "");
    }

    #[test]
    fn unknown_strict_is_error() {
        let e = vars().expand("${workspce}/x", true).unwrap_err();
        assert!(e.contains("workspce"), "{e}");
        assert!(vars().expand("${home", true).is_err());
    }

    #[test]
    fn unknown_lenient_is_kept() {
        assert_eq!(
            vars().expand("cg=${cg}; echo ${home} ${x", false).unwrap(),
            "cg=${cg}; echo /root ${x"
        );
    }
}
