//! The `auralink` binary.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use auralink::config::{Config, ConfigError, Overrides};
use auralink::signal::token;
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "auralink", version, about = "Real-time media server with an in-process AI pipeline")]
struct Cli {
    /// TOML configuration file.
    #[arg(long, short, global = true, env = "AURALINK_CONFIG")]
    config: Option<PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "AURALINK_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Mint a room join token (LiveKit format).
    Token(TokenArgs),
    /// Apply pending database migrations and exit (`serve` applies them too).
    Migrate(MigrateArgs),
    /// The AIC neural codec's tools.
    #[command(subcommand)]
    Aic(AicCommand),
    /// Speech recognition models' tools.
    #[command(subcommand)]
    Whisper(WhisperCommand),
}

#[derive(Subcommand)]
enum WhisperCommand {
    /// Convert a CTranslate2 Whisper folder (as PyPI ships it) for the server; scripts/models.sh runs it.
    Convert {
        /// The folder with `model.bin` (or its `model.bin.part*` pieces), `config.json`, `vocabulary.txt`.
        #[arg(long)]
        from: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum AicCommand {
    /// Train aic-v1 from the sets scripts/aic-data.sh builds (docs/aic.md, "Training").
    Train(TrainArgs),
    /// Train the network that enhances Opus in aic-v2's Opus-core modes (docs/aic.md).
    TrainEnhancer(EnhancerArgs),
    /// Fit the line quantizer of aic-v2's AGGRESSIVE vocoder (docs/aic.md); the build embeds it.
    TrainVocoder(VocoderArgs),
}

// Where every training command reads and writes.
#[derive(Args)]
struct TrainingRun {
    /// The data folder (its `train/` is read; `heldout/` never is).
    #[arg(long, env = "AURALINK_AIC_DATA")]
    data: PathBuf,
    /// Where the weights and their manifest go.
    #[arg(long, default_value = "models/aic")]
    out: PathBuf,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args)]
struct VocoderArgs {
    #[command(flatten)]
    run: TrainingRun,
    /// K-means iterations per codebook.
    #[arg(long, default_value_t = 30)]
    iterations: usize,
}

#[derive(Args)]
struct EnhancerArgs {
    #[command(flatten)]
    run: TrainingRun,
    #[arg(long, default_value_t = 8000)]
    steps: usize,
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    run: TrainingRun,
    #[arg(long, default_value_t = 6000)]
    autoencoder_steps: usize,
    #[arg(long, default_value_t = 2000)]
    decoder_steps: usize,
}

#[derive(Args)]
struct MigrateArgs {
    /// `sqlite:…` or `postgres://…`; default: the configured database.
    #[arg(long, env = "AURALINK_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    #[arg(long, env = "AURALINK_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Args)]
struct ServeArgs {
    /// Development mode: generates the keys that are not configured (kept in the data dir),
    /// serves `/dev/token` and binds HTTP to 127.0.0.1 unless --bind says otherwise.
    #[arg(long, env = "AURALINK_DEV")]
    dev: bool,
    /// HTTP address to bind (default 0.0.0.0; 127.0.0.1 in dev mode).
    #[arg(long, env = "AURALINK_HTTP_BIND")]
    bind: Option<IpAddr>,
    /// HTTP port (API, signaling, demo page).
    #[arg(long, env = "AURALINK_HTTP_PORT")]
    http_port: Option<u16>,
    /// Media port, UDP and TCP.
    #[arg(long, env = "AURALINK_RTC_PORT")]
    rtc_port: Option<u16>,
    /// Addresses to serve media on and advertise (comma-separated).
    #[arg(long, env = "AURALINK_NODE_IPS", value_delimiter = ',')]
    node_ips: Option<Vec<IpAddr>>,
    /// Data directory (database, dev keys).
    #[arg(long, env = "AURALINK_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// API keys, "key: secret[, key: secret]". Required unless --dev.
    #[arg(long, env = "AURALINK_KEYS", hide_env_values = true)]
    keys: Option<String>,
    /// `sqlite:…` or `postgres://…`; default: SQLite in the data dir.
    #[arg(long, env = "AURALINK_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Platform administrator's bearer key (at least 32 bytes).
    #[arg(long, env = "AURALINK_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
    /// Base64 of 32 random bytes sealing secrets stored in the database.
    #[arg(long, env = "AURALINK_SECRET_KEY", hide_env_values = true)]
    secret_key: Option<String>,
    /// `redis://…`, shared by every node (rate limits).
    #[arg(long, env = "AURALINK_REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// LiveKit-format webhook endpoints (comma-separated).
    #[arg(long, env = "AURALINK_WEBHOOK_URLS", value_delimiter = ',')]
    webhook_urls: Option<Vec<String>>,
}

#[derive(Args)]
struct TokenArgs {
    #[arg(long)]
    room: String,
    #[arg(long)]
    identity: String,
    /// Validity in seconds.
    #[arg(long, default_value_t = 6 * 3600)]
    ttl: u64,
    /// Deny publishing.
    #[arg(long)]
    no_publish: bool,
    /// Deny subscribing.
    #[arg(long)]
    no_subscribe: bool,
    /// API key and secret; default: the first configured pair, or the dev pair.
    #[arg(long, env = "AURALINK_API_KEY")]
    api_key: Option<String>,
    #[arg(long, env = "AURALINK_API_SECRET", hide_env_values = true)]
    api_secret: Option<String>,
    #[arg(long, env = "AURALINK_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Sign with the dev key pair in the data dir (made if missing) when no key is configured.
    #[arg(long, env = "AURALINK_DEV")]
    dev: bool,
}

fn init_logs(json: bool) {
    let filter = EnvFilter::try_from_env("AURALINK_LOG").unwrap_or_else(|_| EnvFilter::new("info,str0m=warn"));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter);
    if json { fmt.json().init() } else { fmt.init() }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_json);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("auralink: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Serve(a) => {
            let o = Overrides {
                dev: a.dev,
                http_bind: a.bind,
                http_port: a.http_port,
                rtc_port: a.rtc_port,
                node_ips: a.node_ips,
                data_dir: a.data_dir,
                keys: a.keys,
                database_url: a.database_url,
                admin_key: a.admin_key,
                webhook_urls: a.webhook_urls,
                secret_key: a.secret_key,
                redis_url: a.redis_url,
            };
            let config = Config::load(cli.config.as_deref(), o)?;
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(serve(config))
        }
        Command::Migrate(a) => {
            let o = Overrides { data_dir: a.data_dir, database_url: a.database_url, ..Default::default() };
            let config = Config::load(cli.config.as_deref(), o)?;
            config.create_data_dir()?;
            let rt = tokio::runtime::Runtime::new()?;
            let version = rt.block_on(auralink::db::Db::migrate(&config.database_url()))?;
            println!("database schema at version {version}");
            Ok(())
        }
        Command::Aic(AicCommand::Train(a)) => {
            use auralink::codec::aic::train;
            let cfg = train::TrainConfig {
                data: a.run.data,
                out: a.run.out,
                seed: a.run.seed,
                autoencoder_steps: a.autoencoder_steps,
                decoder_steps: a.decoder_steps,
                ..Default::default()
            };
            let report = train::train(&cfg)?;
            save_manifest(&cfg.out.join("manifest.toml"), &train::manifest(&cfg, &report, &command_line())?)
        }
        Command::Aic(AicCommand::TrainEnhancer(a)) => {
            use auralink::codec::aic::train_enhance;
            let cfg = train_enhance::EnhanceConfig {
                data: a.run.data,
                out: a.run.out,
                seed: a.run.seed,
                steps: a.steps,
                ..Default::default()
            };
            let report = train_enhance::train(&cfg)?;
            let manifest = train_enhance::manifest(&cfg, &report, &command_line())?;
            save_manifest(&cfg.out.join("aic-v2-enhancer.toml"), &manifest)
        }
        Command::Aic(AicCommand::TrainVocoder(a)) => {
            use auralink::codec::aic::train_vocoder;
            let cfg = train_vocoder::VocoderConfig {
                data: a.run.data,
                out: a.run.out,
                seed: a.run.seed,
                iterations: a.iterations,
            };
            let report = train_vocoder::train(&cfg)?;
            let manifest = train_vocoder::manifest(&cfg, &report, &command_line())?;
            save_manifest(&cfg.out.join("aic-v2-lsf.toml"), &manifest)
        }
        Command::Whisper(WhisperCommand::Convert { from, out }) => {
            auralink::pipeline::whisper::ct2::convert(&from, &out)?;
            println!("converted {} into {}", from.display(), out.display());
            Ok(())
        }
        Command::Token(a) => {
            let o = Overrides { data_dir: a.data_dir.clone(), dev: a.dev, ..Default::default() };
            let mut config = Config::load(cli.config.as_deref(), o)?;
            let (key, secret) = match (a.api_key, a.api_secret) {
                (Some(k), Some(s)) => (k, s),
                _ => {
                    let dev = config.resolve_keys()?;
                    dev.or_else(|| config.keys.into_iter().next()).ok_or(ConfigError::NoKeys)?
                }
            };
            let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
            let mut claims = token::join_claims(&key, &a.room, &a.identity, now, a.ttl);
            claims.video.can_publish = Some(!a.no_publish);
            claims.video.can_subscribe = Some(!a.no_subscribe);
            println!("{}", token::mint(&claims, &secret));
            Ok(())
        }
    }
}

/// How this process was started, for a training manifest.
fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("auralink {}", args.join(" "))
}

/// Writes a training manifest next to the weights, and shows it.
fn save_manifest(path: &std::path::Path, manifest: &str) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::write(path, manifest)?;
    println!("{manifest}");
    Ok(())
}

async fn serve(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let server = auralink::server::start(config).await?;
    if let Some((key, secret)) = &server.dev_keys {
        println!("dev mode: API key {key}  API secret {secret}");
        if let Some(admin) = &server.admin_key {
            println!("dev mode: admin key {admin} (Authorization: Bearer …, POST /v1/orgs)");
        }
    }
    println!("demo page: http://{}/", display_addr(server.http_addr));
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("shutting down");
            server.shutdown().await;
        }
    }
    Ok(())
}

fn display_addr(a: std::net::SocketAddr) -> String {
    if a.ip().is_unspecified() { format!("localhost:{}", a.port()) } else { a.to_string() }
}
