//! Static keys from an AWS shared profile: the profile `AWS_PROFILE` names
//! (else `default`) in the shared credentials file
//! (`AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`) and the
//! shared config file (`AWS_CONFIG_FILE`, else `~/.aws/config`, where the
//! section is `[profile NAME]`, or `[default]`). The credentials file wins
//! over the config file, key by key. Comments are whole lines starting
//! with `#` or `;` (and whatever follows a section header); a `;` or `#`
//! inside a value is kept, as the AWS CLI keeps it.
//!
//! Only static keys (`aws_access_key_id`, `aws_secret_access_key`,
//! `aws_session_token`) and `region` are read. A profile that gets its
//! credentials another way (`role_arn`, `sso_*`, `credential_process`)
//! is refused with a clear error when it was named or has keys too (an AWS
//! SDK would assume the role; acct will not use another identity
//! silently). The `default` profile without keys lets the other sources
//! (container, web identity, instance metadata) give them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The variables that choose the profile and its files.
pub const PROFILE_VARIABLES: &[&str] = &["AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"];

/// The largest shared file read (they hold a few profiles).
const FILE_BYTES_MAX: u64 = 1024 * 1024;

/// What a profile gives.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The profile's name.
    pub name: String,
    /// `aws_access_key_id`.
    pub access_key_id: Option<String>,
    /// `aws_secret_access_key`.
    pub secret_access_key: Option<String>,
    /// `aws_session_token`.
    pub session_token: Option<String>,
    /// `region`.
    pub region: Option<String>,
}

/// Why a profile could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// A shared file exists but could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A shared file is larger than [`FILE_BYTES_MAX`].
    #[error("{0} is larger than 1 MiB: not an AWS shared file")]
    TooLarge(PathBuf),
    /// `AWS_PROFILE` names a profile neither file has.
    #[error("AWS_PROFILE names {0:?}, which neither shared file has")]
    Missing(String),
    /// The profile gets credentials another way than static keys (and
    /// has keys too): an AWS SDK would use the other way.
    #[error(
        "AWS profile {name:?} uses {how}: acct reads only static keys from a profile and will not use another \
         identity than an AWS SDK would; give keys in the environment, or a profile with static keys only"
    )]
    Indirect {
        /// The profile.
        name: String,
        /// The keys that name the other way.
        how: String,
    },
    /// The named profile has no static keys.
    #[error(
        "AWS profile {name:?} has no aws_access_key_id and aws_secret_access_key{how}: acct reads static keys from \
         a profile; give keys in the environment, or run where the container or instance provides them"
    )]
    NoStaticKeys {
        /// The profile.
        name: String,
        /// How the profile gets credentials instead, when it says.
        how: String,
    },
}

/// The profile the environment chooses, read from the shared files.
/// `Ok(None)` when no profile applies: `AWS_PROFILE` is unset and neither
/// file has a `default` profile with keys.
pub fn from_environment() -> Result<Option<Profile>, ProfileError> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let file = |variable: &str, default: &str| {
        std::env::var_os(variable)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|home| home.join(".aws").join(default)))
    };
    let named = std::env::var("AWS_PROFILE").ok().filter(|name| !name.is_empty());
    load(
        named.as_deref(),
        file("AWS_SHARED_CREDENTIALS_FILE", "credentials").as_deref(),
        file("AWS_CONFIG_FILE", "config").as_deref(),
    )
}

/// The profile `named` (else `default`) from the two files (either may be
/// absent).
pub fn load(
    named: Option<&str>,
    credentials: Option<&Path>,
    config: Option<&Path>,
) -> Result<Option<Profile>, ProfileError> {
    let name = named.unwrap_or("default");
    let from_credentials = match credentials {
        Some(path) => read(path)?.and_then(|text| section(&text, name)),
        None => None,
    };
    let from_config = match config {
        Some(path) => read(path)?.and_then(|text| {
            let named = section(&text, &format!("profile {name}"));
            if name == "default" {
                named.or_else(|| section(&text, "default"))
            } else {
                named
            }
        }),
        None => None,
    };
    if from_credentials.is_none() && from_config.is_none() {
        return match named {
            Some(name) => Err(ProfileError::Missing(name.to_owned())),
            None => Ok(None),
        };
    }
    let mut keys = from_config.unwrap_or_default();
    keys.extend(from_credentials.unwrap_or_default());
    let profile = Profile {
        name: name.to_owned(),
        access_key_id: keys.get("aws_access_key_id").cloned(),
        secret_access_key: keys.get("aws_secret_access_key").cloned(),
        session_token: keys.get("aws_session_token").cloned(),
        region: keys.get("region").cloned(),
    };
    let how: Vec<&str> = ["role_arn", "credential_process", "sso_session", "sso_start_url"]
        .into_iter()
        .filter(|key| keys.contains_key(*key))
        .collect();
    let has_keys = profile.access_key_id.is_some() && profile.secret_access_key.is_some();
    if has_keys && !how.is_empty() {
        return Err(ProfileError::Indirect {
            name: name.to_owned(),
            how: how.join(", "),
        });
    }
    if !has_keys {
        if named.is_none() {
            // The default profile without keys (a region only, or a role
            // for another tool): other sources give the keys.
            return Ok(Some(profile));
        }
        return Err(ProfileError::NoStaticKeys {
            name: name.to_owned(),
            how: if how.is_empty() {
                String::new()
            } else {
                format!(" (it uses {})", how.join(", "))
            },
        });
    }
    Ok(Some(profile))
}

/// A file's text, or `None` when it does not exist.
fn read(path: &Path) -> Result<Option<String>, ProfileError> {
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ProfileError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if metadata.len() > FILE_BYTES_MAX {
        return Err(ProfileError::TooLarge(path.to_path_buf()));
    }
    std::fs::read_to_string(path)
        .map(Some)
        .map_err(|source| ProfileError::Read {
            path: path.to_path_buf(),
            source,
        })
}

/// The `key = value` pairs of section `[name]` (keys lowercased; comments
/// `#` and `;` and indented continuation lines skipped), or `None` when
/// the text has no such section.
fn section(text: &str, name: &str) -> Option<HashMap<String, String>> {
    let mut found = None;
    let mut current: Option<String> = None;
    for line in text.lines() {
        let indented = line.starts_with([' ', '\t']);
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            // `[name]`, perhaps followed by a comment; anything else is
            // no section this reader knows.
            current = rest.split_once(']').and_then(|(header, after)| {
                let after = after.trim();
                (after.is_empty() || after.starts_with(['#', ';']))
                    .then(|| header.split_whitespace().collect::<Vec<_>>().join(" "))
            });
            if current.as_deref() == Some(name) {
                found.get_or_insert_with(HashMap::new);
            }
            continue;
        }
        if indented || current.as_deref() != Some(name) {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            let keys = found.get_or_insert_with(HashMap::new);
            keys.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(credentials: &str, config: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let folder = tempfile::tempdir().unwrap();
        let credentials_path = folder.path().join("credentials");
        let config_path = folder.path().join("config");
        std::fs::write(&credentials_path, credentials).unwrap();
        std::fs::write(&config_path, config).unwrap();
        (folder, credentials_path, config_path)
    }

    const CREDENTIALS: &str = "# keys\n[default]\naws_access_key_id = AKIDEFAULT\naws_secret_access_key = s3cret\n\n\
        [archive]\nAWS_ACCESS_KEY_ID=AKIARCHIVE\naws_secret_access_key=other ; not a comment here\n\
        aws_session_token = token\n";
    const CONFIG: &str = "[default]\nregion = eu-west-1\n[profile archive]\nregion=us-east-2\n\
        s3 =\n  max_concurrent_requests = 4\n[profile sso]\nsso_session = corp\nregion = eu-north-1\n";

    #[test]
    fn the_default_profile_joins_both_files() {
        let (_folder, credentials, config) = files(CREDENTIALS, CONFIG);
        let profile = load(None, Some(&credentials), Some(&config)).unwrap().unwrap();
        assert_eq!(profile.access_key_id.as_deref(), Some("AKIDEFAULT"));
        assert_eq!(profile.secret_access_key.as_deref(), Some("s3cret"));
        assert_eq!(profile.session_token, None);
        assert_eq!(profile.region.as_deref(), Some("eu-west-1"));
    }

    #[test]
    fn a_named_profile_reads_its_own_sections() {
        let (_folder, credentials, config) = files(CREDENTIALS, CONFIG);
        let profile = load(Some("archive"), Some(&credentials), Some(&config))
            .unwrap()
            .unwrap();
        assert_eq!(profile.access_key_id.as_deref(), Some("AKIARCHIVE"));
        assert_eq!(profile.secret_access_key.as_deref(), Some("other ; not a comment here"));
        assert_eq!(profile.session_token.as_deref(), Some("token"));
        assert_eq!(profile.region.as_deref(), Some("us-east-2"));
    }

    #[test]
    fn a_named_profile_without_static_keys_or_absent_is_refused() {
        let (_folder, credentials, config) = files(CREDENTIALS, CONFIG);
        let error = load(Some("sso"), Some(&credentials), Some(&config)).unwrap_err();
        assert!(error.to_string().contains("sso_session"), "{error}");
        assert!(matches!(
            load(Some("nobody"), Some(&credentials), Some(&config)),
            Err(ProfileError::Missing(_))
        ));
    }

    #[test]
    fn a_header_with_a_comment_starts_its_section() {
        let credentials = "[default]\naws_access_key_id = AKIDEFAULT\naws_secret_access_key = s3cret\n\
            [prod] # production\naws_access_key_id = AKIPROD\naws_secret_access_key = prod\n[broken\nregion = x\n";
        let (_folder, credentials, config) = files(credentials, "[profile default]\nregion = ap-south-1\n");
        let default = load(None, Some(&credentials), Some(&config)).unwrap().unwrap();
        assert_eq!(default.access_key_id.as_deref(), Some("AKIDEFAULT"));
        assert_eq!(default.region.as_deref(), Some("ap-south-1"));
        let prod = load(Some("prod"), Some(&credentials), Some(&config)).unwrap().unwrap();
        assert_eq!(prod.access_key_id.as_deref(), Some("AKIPROD"));
        assert_eq!(prod.region, None, "a malformed header ends the section before it");
    }

    #[test]
    fn keys_beside_a_role_are_refused() {
        let credentials =
            "[default]\naws_access_key_id = AKID\naws_secret_access_key = s\nrole_arn = arn:aws:iam::1:role/r\n";
        let (_folder, credentials, config) = files(credentials, "");
        let error = load(None, Some(&credentials), Some(&config)).unwrap_err();
        assert!(matches!(error, ProfileError::Indirect { .. }), "{error}");
    }

    #[test]
    fn no_files_and_no_name_is_no_profile() {
        let folder = tempfile::tempdir().unwrap();
        let absent = folder.path().join("absent");
        assert_eq!(load(None, Some(&absent), Some(&absent)).unwrap(), None);
        let (_folder, credentials, config) = files("", "[default]\nregion = eu-west-3\n");
        let profile = load(None, Some(&credentials), Some(&config)).unwrap().unwrap();
        assert_eq!(profile.region.as_deref(), Some("eu-west-3"));
        assert_eq!(profile.access_key_id, None);
    }
}
