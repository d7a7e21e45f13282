//! Names: `mlcache://AUTHORITY/PATH`, parsed once, shown the same way, and
//! bound to the chunk's ciphertext through its binding name.

use super::ClientError;

/// A parsed `mlcache://AUTHORITY/PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    /// The origin's authority.
    pub authority: String,
    /// Path and query.
    pub path: String,
}

impl Name {
    /// The binding name the chunk's ciphertext is bound to
    /// (`manifest::binding_name`).
    pub fn binding(&self) -> Result<String, ClientError> {
        crate::manifest::binding_name(&self.authority, &self.path)
            .map_err(|_| ClientError::BadName(self.to_string()))
    }

    /// Parses a chunk or title name.
    pub fn parse(s: &str) -> Result<Name, ClientError> {
        let rest = s
            .strip_prefix("mlcache://")
            .ok_or_else(|| ClientError::BadName(s.into()))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(ClientError::BadName(s.into()));
        }
        Ok(Name {
            authority: authority.to_string(),
            path: path.to_string(),
        })
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "mlcache://{}{}", self.authority, self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let n = Name::parse("mlcache://data.example.com/starwars/chunk12345").unwrap();
        assert_eq!(n.authority, "data.example.com");
        assert_eq!(n.path, "/starwars/chunk12345");
        assert_eq!(
            n.to_string(),
            "mlcache://data.example.com/starwars/chunk12345"
        );
        assert!(Name::parse("http://x/y").is_err());
        assert!(Name::parse("mlcache:///y").is_err());
    }
}
