//! Names in Redis.

/// Key names under one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    prefix: String,
}

impl Names {
    pub(crate) fn new(prefix: &str) -> Self {
        Names {
            prefix: prefix.to_owned(),
        }
    }

    /// A quota's key: kind (`h`, `o`, `m`) and whose.
    pub(crate) fn quota(&self, kind: &str, whose: &str) -> String {
        format!("{}q:{kind}:{whose}", self.prefix)
    }
}
