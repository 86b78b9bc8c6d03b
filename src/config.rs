//! Server configuration: a TOML file, then `AURALINK_*` environment variables and flags on top.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Secrets shorter than this are refused outside dev mode (HS256 wants ≥ 256 bits).
pub const MIN_SECRET_LEN: usize = 32;

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parsing {path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("writing dev keys to {path}: {source}")]
    DevKeys { path: PathBuf, source: std::io::Error },
    #[error("API secret for key {key:?} is {len} bytes; at least {MIN_SECRET_LEN} are required")]
    ShortSecret { key: String, len: usize },
    #[error("malformed keys {0:?}: expected \"key: secret[, key: secret]\"")]
    KeysSyntax(String),
    #[error("admin_key is {0} bytes; at least {MIN_SECRET_LEN} are required")]
    ShortAdminKey(usize),
    #[error(
        "secret_key (AURALINK_SECRET_KEY) is required outside dev mode: base64 of 32 random bytes, e.g. `openssl rand -base64 32`"
    )]
    MissingSecretKey,
    #[error(
        "no API keys configured: set keys (AURALINK_KEYS=\"key: secret\" or --keys), or pass --dev (AURALINK_DEV=true) for a local development server with generated keys"
    )]
    NoKeys,
}

/// Everything `auralink serve` needs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP listener: API, signaling, demo page.
    pub http: HttpConfig,
    /// Media transport (ICE over UDP and TCP).
    pub rtc: RtcConfig,
    /// Room lifecycle.
    pub room: RoomConfig,
    /// Where the server keeps its files (SQLite database, dev keys).
    pub data_dir: PathBuf,
    /// Files served beside the pages compiled into the binary: the livekit-client bundle that
    /// `scripts/web-vendor.sh` installs under `vendor/`.
    pub web_dir: PathBuf,
    /// The AIC model's weights (docs/aic.md). Without the file, AIC is unavailable and
    /// tracks stay Opus; the server runs.
    pub aic_model: PathBuf,
    /// The Opus enhancer's weights, aic-v2's other half; AIC needs both.
    pub aic_enhancer: PathBuf,
    /// Audio tracks this node runs through AIC at most (a thread and model state each), and
    /// of those the most one org's rooms have; more stay Opus, counted.
    pub aic_max_tracks: usize,
    pub aic_max_tracks_per_org: usize,
    /// Speech taps (docs/speech.md).
    pub speech: SpeechConfig,
    /// Development mode, only ever switched on explicitly (`--dev`, `AURALINK_DEV`): keys, the
    /// admin key and the secret key that are not configured are generated and kept in the
    /// data dir, `/dev/token` mints join tokens for anybody, and HTTP binds 127.0.0.1 unless
    /// `http.bind` says otherwise.
    pub dev: bool,
    /// API key → API secret. Required outside dev mode; in dev mode, empty means a pair is
    /// generated and kept in the data dir.
    pub keys: BTreeMap<String, String>,
    /// `sqlite:…` or `postgres://…`; default: `auralink.db` in the data dir.
    pub database_url: Option<String>,
    /// Bearer key of the platform administrator, who creates orgs (`POST /v1/orgs`). Dev
    /// mode generates one into the data dir; otherwise it must have at least
    /// [`MIN_SECRET_LEN`] bytes, and without one no org can be created over HTTP.
    pub admin_key: Option<String>,
    /// LiveKit-format webhook endpoints for the node's rooms (those of tokens signed with
    /// `keys`), signed with the first of `keys`. Orgs set their own (`PATCH /v1/orgs/{id}`).
    pub webhook_urls: Vec<String>,
    /// Whether orgs' webhook URLs may point at loopback, private or link-local addresses.
    /// Off: a tenant cannot make the server call into its own network.
    pub webhook_allow_private_networks: bool,
    /// Base64 of 32 random bytes: seals secrets stored in the database (orgs' LiveKit API
    /// secrets). Required outside dev mode; dev mode generates one into the data dir.
    pub secret_key: Option<String>,
    /// `redis://…`: rate-limit budgets (and later more) shared across nodes.
    pub redis_url: Option<String>,
    /// Control API requests per caller (API key) and minute, on average.
    pub rate_limit_per_minute: u32,
    /// Requests a caller may make at once before the average applies.
    pub rate_limit_burst: u32,
    /// Failed authentications (control API, RoomService) per client address and minute, on
    /// average; past them the address gets 429 until its budget refills.
    pub auth_failures_per_minute: u32,
    /// Failed authentications an address may make at once before the average applies.
    pub auth_failure_burst: u32,
}

/// HTTP listener settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Default: 0.0.0.0, or 127.0.0.1 in dev mode.
    pub bind: Option<IpAddr>,
    pub port: u16,
    /// Largest signaling body (SDP offer, trickle fragment) accepted, in bytes.
    pub max_signal_body: usize,
}

/// Media transport settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RtcConfig {
    /// UDP port for ICE; 0 picks a free port.
    pub udp_port: u16,
    /// TCP port for ICE-TCP (passive); 0 picks a free port.
    pub tcp_port: u16,
    /// Addresses to bind and advertise as host candidates. Empty: loopback plus the
    /// address of the default route, when there is one.
    pub node_ips: Vec<IpAddr>,
    /// STUN/TURN servers handed to clients (WHIP/WHEP Link headers). A TURN server such as
    /// coturn is deployed beside AuraLink; str0m has none built in.
    pub ice_servers: Vec<IceServer>,
    /// How long a participant may stay ICE-disconnected before it is removed.
    pub disconnect_timeout_secs: u64,
    /// How long a new session may take to connect (ICE and DTLS) before it is removed.
    pub connect_timeout_secs: u64,
    /// Starting bandwidth estimate for subscribers, before TWCC feedback arrives.
    pub initial_bwe_kbps: u64,
}

/// One STUN or TURN server for clients.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub credential: Option<String>,
}

/// Room lifecycle settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomConfig {
    /// A room with nobody in it closes after this long.
    pub empty_timeout_secs: u64,
}

/// The node's speech recognition: where the models are and how much CPU it may take.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpeechConfig {
    /// Holds one folder per model (`tiny.en/`, `base/`), as scripts/models.sh writes them.
    /// A model that is missing makes the rooms that need it fail to enable transcription.
    pub models: PathBuf,
    /// Utterances read at once (threads running Whisper; each read's matrix products use
    /// candle's thread pool, every core unless `RAYON_NUM_THREADS` says otherwise).
    pub workers: usize,
    /// Utterances waiting for a worker before new ones are dropped.
    pub queue: usize,
    /// Audio tracks this node transcribes at most; more are refused with `capacity`.
    pub max_tracks: usize,
    /// Of those, the most one org's rooms have.
    pub max_tracks_per_org: usize,
}

impl Default for SpeechConfig {
    fn default() -> Self {
        SpeechConfig {
            models: PathBuf::from("./models/whisper"),
            workers: 1,
            queue: 8,
            max_tracks: 8,
            max_tracks_per_org: 4,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http: HttpConfig::default(),
            rtc: RtcConfig::default(),
            room: RoomConfig::default(),
            data_dir: PathBuf::from("./data"),
            web_dir: PathBuf::from("./web"),
            aic_model: PathBuf::from("./models/aic/aic-v1.safetensors"),
            aic_enhancer: PathBuf::from("./models/aic/aic-v2-enhancer.safetensors"),
            aic_max_tracks: 32,
            aic_max_tracks_per_org: 16,
            speech: SpeechConfig::default(),
            dev: false,
            keys: BTreeMap::new(),
            database_url: None,
            admin_key: None,
            webhook_urls: Vec::new(),
            webhook_allow_private_networks: false,
            secret_key: None,
            redis_url: None,
            rate_limit_per_minute: 1200,
            rate_limit_burst: 100,
            auth_failures_per_minute: 30,
            auth_failure_burst: 20,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { bind: None, port: 7880, max_signal_body: 64 * 1024 }
    }
}

impl Default for RtcConfig {
    fn default() -> Self {
        RtcConfig {
            udp_port: 7881,
            tcp_port: 7881,
            node_ips: Vec::new(),
            ice_servers: Vec::new(),
            disconnect_timeout_secs: 20,
            connect_timeout_secs: 30,
            initial_bwe_kbps: 1_500,
        }
    }
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig { empty_timeout_secs: 300 }
    }
}

impl RtcConfig {
    /// See [`RtcConfig::disconnect_timeout_secs`].
    pub fn disconnect_timeout(&self) -> Duration {
        Duration::from_secs(self.disconnect_timeout_secs)
    }

    /// See [`RtcConfig::connect_timeout_secs`].
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }
}

impl RoomConfig {
    /// See [`RoomConfig::empty_timeout_secs`].
    pub fn empty_timeout(&self) -> Duration {
        Duration::from_secs(self.empty_timeout_secs)
    }
}

/// Values from flags and `AURALINK_*` variables; each one set wins over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// Switches dev mode on (a flag: it cannot switch off what the file switched on).
    pub dev: bool,
    pub http_bind: Option<IpAddr>,
    pub http_port: Option<u16>,
    pub rtc_port: Option<u16>,
    pub node_ips: Option<Vec<IpAddr>>,
    pub data_dir: Option<PathBuf>,
    /// `"key: secret, key2: secret2"`, as LiveKit's `LIVEKIT_KEYS`.
    pub keys: Option<String>,
    pub database_url: Option<String>,
    pub admin_key: Option<String>,
    pub webhook_urls: Option<Vec<String>>,
    pub secret_key: Option<String>,
    pub redis_url: Option<String>,
}

impl Config {
    /// Reads the file (if any) and applies overrides.
    pub fn load(path: Option<&Path>, o: Overrides) -> Result<Config, ConfigError> {
        let mut config = match path {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.into(), source })?
            }
            None => Config::default(),
        };
        config.dev |= o.dev;
        if o.http_bind.is_some() {
            config.http.bind = o.http_bind;
        }
        if let Some(p) = o.http_port {
            config.http.port = p;
        }
        if let Some(p) = o.rtc_port {
            config.rtc.udp_port = p;
            config.rtc.tcp_port = p;
        }
        if let Some(ips) = o.node_ips {
            config.rtc.node_ips = ips;
        }
        if let Some(d) = o.data_dir {
            config.data_dir = d;
        }
        if let Some(keys) = o.keys {
            config.keys = parse_keys(&keys)?;
        }
        if o.database_url.is_some() {
            config.database_url = o.database_url;
        }
        if o.admin_key.is_some() {
            config.admin_key = o.admin_key;
        }
        if let Some(urls) = o.webhook_urls {
            config.webhook_urls = urls;
        }
        if o.secret_key.is_some() {
            config.secret_key = o.secret_key;
        }
        if o.redis_url.is_some() {
            config.redis_url = o.redis_url;
        }
        Ok(config)
    }

    /// Everything on 127.0.0.1 with ports the OS picks, dev mode: for tests, benchmarks and
    /// embedding.
    pub fn loopback(data_dir: impl Into<PathBuf>) -> Config {
        let mut c = Config { data_dir: data_dir.into(), dev: true, ..Config::default() };
        c.http.bind = Some(IpAddr::from([127, 0, 0, 1]));
        c.http.port = 0;
        c.rtc.udp_port = 0;
        c.rtc.tcp_port = 0;
        c.rtc.node_ips = vec![IpAddr::from([127, 0, 0, 1])];
        c
    }

    /// The address HTTP binds: configured, else every interface, or only loopback in dev
    /// mode (its `/dev/token` hands out tokens to whoever asks).
    pub fn http_bind(&self) -> IpAddr {
        self.http.bind.unwrap_or(if self.dev { IpAddr::from([127, 0, 0, 1]) } else { IpAddr::from([0, 0, 0, 0]) })
    }

    /// Creates the data dir readable by the server's user only (an existing one is left as
    /// it is: it may be somebody else's folder too).
    pub fn create_data_dir(&self) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.data_dir)
    }

    /// The dev-mode secret in `name` in the data dir, made by `make` (and written, readable
    /// by the server's user only) on first run.
    fn dev_file(&self, name: &str, make: impl FnOnce() -> String) -> Result<String, ConfigError> {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let path = self.data_dir.join(name);
        let fail = |source| ConfigError::DevKeys { path: path.clone(), source };
        if let Ok(text) = std::fs::read_to_string(&path) {
            // Written by an earlier version, perhaps readable to all.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
            return Ok(text);
        }
        let text = make();
        self.create_data_dir().map_err(fail)?;
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).map_err(fail)?;
        f.write_all(text.as_bytes()).map_err(fail)?;
        Ok(text)
    }

    /// The database to open: the configured URL, or SQLite in the data dir.
    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("auralink.db").display()))
    }

    /// The key that seals stored secrets: configured, or in dev mode loaded (first run:
    /// generated) from the data dir.
    pub fn resolve_secret_key(&mut self) -> Result<String, ConfigError> {
        if let Some(k) = &self.secret_key {
            return Ok(k.clone());
        }
        if !self.is_dev_mode() {
            return Err(ConfigError::MissingSecretKey);
        }
        let key = self.dev_file("dev-secret-key", crate::secrets::SecretBox::generate_key)?.trim().to_string();
        self.secret_key = Some(key.clone());
        Ok(key)
    }

    /// Checks the admin key, or in dev mode loads (first run: generates) one.
    pub fn resolve_admin_key(&mut self) -> Result<(), ConfigError> {
        if let Some(k) = &self.admin_key {
            return if k.len() < MIN_SECRET_LEN { Err(ConfigError::ShortAdminKey(k.len())) } else { Ok(()) };
        }
        if !self.is_dev_mode() {
            return Ok(());
        }
        let key = self.dev_file("dev-admin-key", || format!("adm_{}", random_alnum(&mut rand::thread_rng(), 43)))?;
        self.admin_key = Some(key.trim().to_string());
        Ok(())
    }

    /// Whether dev mode is on; see [`Config::dev`].
    pub fn is_dev_mode(&self) -> bool {
        self.dev
    }

    /// Checks the configured keys, or in dev mode without any loads (first run: generates)
    /// the dev key pair. Returns the dev pair when one is in use, so the caller can print it.
    /// Without keys outside dev mode the server has nothing to verify tokens with: refused.
    pub fn resolve_keys(&mut self) -> Result<Option<(String, String)>, ConfigError> {
        if !self.keys.is_empty() {
            for (key, secret) in &self.keys {
                if secret.len() < MIN_SECRET_LEN {
                    return Err(ConfigError::ShortSecret { key: key.clone(), len: secret.len() });
                }
            }
            return Ok(None);
        }
        if !self.is_dev_mode() {
            return Err(ConfigError::NoKeys);
        }
        let text = self.dev_file("dev-keys.toml", || {
            toml::to_string(&BTreeMap::from([generate_key_pair()])).expect("a string map serializes")
        })?;
        let path = self.data_dir.join("dev-keys.toml");
        let keys =
            toml::from_str::<BTreeMap<String, String>>(&text).map_err(|source| ConfigError::Parse { path, source })?;
        self.keys = keys;
        Ok(self.keys.iter().next().map(|(k, s)| (k.clone(), s.clone())))
    }
}

/// A fresh `(api key, api secret)` pair; the secret carries 256 random bits.
pub fn generate_key_pair() -> (String, String) {
    let mut rng = rand::thread_rng();
    let key = format!("API{}", random_alnum(&mut rng, 12));
    let secret = random_alnum(&mut rng, 43);
    (key, secret)
}

fn random_alnum(rng: &mut impl Rng, len: usize) -> String {
    rng.sample_iter(rand::distributions::Alphanumeric).take(len).map(char::from).collect()
}

/// Parses `"key: secret, key2: secret2"`.
pub fn parse_keys(s: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once(':').ok_or_else(|| ConfigError::KeysSyntax(s.into()))?;
            let (k, v) = (k.trim(), v.trim());
            if k.is_empty() || v.is_empty() {
                return Err(ConfigError::KeysSyntax(s.into()));
            }
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_overrides() {
        let dir = std::env::temp_dir().join(format!("auralink-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "[http]\nport = 9000\n[rtc]\nudp_port = 9001\n").unwrap();
        let o = Overrides { rtc_port: Some(9100), ..Default::default() };
        let c = Config::load(Some(&file), o).unwrap();
        assert_eq!(c.http.port, 9000);
        assert_eq!((c.rtc.udp_port, c.rtc.tcp_port), (9100, 9100));
        std::fs::write(&file, "[http]\nprot = 1\n").unwrap();
        assert!(matches!(Config::load(Some(&file), Overrides::default()), Err(ConfigError::Parse { .. })));
    }

    #[test]
    fn short_secrets_are_refused_outside_dev_mode() {
        let mut c = Config { keys: parse_keys("k1: short").unwrap(), ..Default::default() };
        assert!(matches!(c.resolve_keys(), Err(ConfigError::ShortSecret { len: 5, .. })));
        c.admin_key = Some("too short".into());
        assert!(matches!(c.resolve_admin_key(), Err(ConfigError::ShortAdminKey(9))));
        assert!(parse_keys("nocolon").is_err());
    }

    #[test]
    fn dev_keys_are_generated_once_and_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("auralink-dev-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut c = Config { data_dir: dir.clone(), dev: true, ..Default::default() };
        let first = c.resolve_keys().unwrap().unwrap();
        assert!(first.1.len() >= MIN_SECRET_LEN);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("dev-keys.toml")), 0o600);
        // A file an earlier version left readable to all is closed on the next start.
        std::fs::set_permissions(dir.join("dev-keys.toml"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut again = Config { data_dir: dir.clone(), dev: true, ..Default::default() };
        assert_eq!(again.resolve_keys().unwrap().unwrap(), first);
        assert_eq!(mode(&dir.join("dev-keys.toml")), 0o600);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn dev_mode_is_explicit_and_binds_loopback() {
        let dir = std::env::temp_dir().join(format!("auralink-nodev-{}", std::process::id()));
        let mut c = Config { data_dir: dir.clone(), ..Default::default() };
        assert!(matches!(c.resolve_keys(), Err(ConfigError::NoKeys)));
        assert!(ConfigError::NoKeys.to_string().contains("--dev"));
        assert!(!dir.exists(), "nothing is written without dev mode");
        assert_eq!(c.http_bind(), IpAddr::from([0, 0, 0, 0]));
        let o = Overrides { dev: true, ..Default::default() };
        let mut dev = Config::load(None, o).unwrap();
        assert_eq!(dev.http_bind(), IpAddr::from([127, 0, 0, 1]));
        dev.http.bind = Some(IpAddr::from([0, 0, 0, 0]));
        assert_eq!(dev.http_bind(), IpAddr::from([0, 0, 0, 0]), "an explicit address wins");
    }
}
