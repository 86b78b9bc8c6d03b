//! Who is calling: the platform administrator (the configured admin key) or an org's API key
//! (`alk_<prefix>_<secret>`, stored as the SHA-256 of the secret). What they may do is the
//! intersection of the key's scopes and the role behind it.

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ratelimit;
use crate::api::state::AppState;
use crate::args;
use crate::error::ApiError;

/// Roles in an org, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Member,
    Admin,
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
    }
}

/// One thing a caller may do. A key's scopes name these; each also needs a minimum role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    OrgRead,
    OrgWrite,
    UsersRead,
    UsersWrite,
    KeysRead,
    KeysWrite,
    RoomsRead,
    RoomsWrite,
    ParticipantsRead,
    ParticipantsWrite,
    DataSend,
    TokensCreate,
    CallsRead,
    AuditRead,
}

impl Perm {
    pub const ALL: [Perm; 14] = [
        Perm::OrgRead,
        Perm::OrgWrite,
        Perm::UsersRead,
        Perm::UsersWrite,
        Perm::KeysRead,
        Perm::KeysWrite,
        Perm::RoomsRead,
        Perm::RoomsWrite,
        Perm::ParticipantsRead,
        Perm::ParticipantsWrite,
        Perm::DataSend,
        Perm::TokensCreate,
        Perm::CallsRead,
        Perm::AuditRead,
    ];

    pub fn scope(self) -> &'static str {
        match self {
            Perm::OrgRead => "org:read",
            Perm::OrgWrite => "org:write",
            Perm::UsersRead => "users:read",
            Perm::UsersWrite => "users:write",
            Perm::KeysRead => "keys:read",
            Perm::KeysWrite => "keys:write",
            Perm::RoomsRead => "rooms:read",
            Perm::RoomsWrite => "rooms:write",
            Perm::ParticipantsRead => "participants:read",
            Perm::ParticipantsWrite => "participants:write",
            Perm::DataSend => "data:send",
            Perm::TokensCreate => "tokens:create",
            Perm::CallsRead => "calls:read",
            Perm::AuditRead => "audit:read",
        }
    }

    /// The weakest role that has this permission.
    pub fn min_role(self) -> Role {
        match self {
            Perm::OrgRead | Perm::UsersRead | Perm::RoomsRead | Perm::ParticipantsRead | Perm::CallsRead => {
                Role::Viewer
            }
            Perm::RoomsWrite | Perm::ParticipantsWrite | Perm::DataSend | Perm::TokensCreate => Role::Member,
            Perm::OrgWrite | Perm::UsersWrite | Perm::KeysRead | Perm::KeysWrite | Perm::AuditRead => Role::Admin,
        }
    }
}

/// Checks a key's requested scopes: each must be a known scope or `*`.
pub fn parse_scopes(scopes: &[String]) -> Result<(), ApiError> {
    for s in scopes {
        if s != "*" && !Perm::ALL.iter().any(|p| p.scope() == s) {
            return Err(ApiError::unprocessable("invalid_scope", format!("unknown scope {s:?}")));
        }
    }
    Ok(())
}

/// Who made a request.
#[derive(Debug, Clone)]
pub enum Principal {
    /// The configured administrator: creates orgs, belongs to none.
    Admin,
    /// An org's API key, with the role it acts with (the lower of its own and its user's).
    Key { org: String, key_id: String, role: Role, scopes: Vec<String> },
}

/// The caller and where the request came from, for authorization and the audit log.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl Caller {
    /// The caller's org and a check that it may do `perm` there.
    pub fn require(&self, perm: Perm) -> Result<&str, ApiError> {
        match &self.principal {
            Principal::Admin => Err(ApiError::forbidden(
                "admin_key",
                "the admin key creates orgs; act on an org with one of its API keys",
            )),
            Principal::Key { org, role, scopes, .. } => {
                let scoped = scopes.iter().any(|s| s == "*" || s == perm.scope());
                if !scoped {
                    return Err(ApiError::forbidden("missing_scope", format!("the key lacks scope {}", perm.scope())));
                }
                if *role < perm.min_role() {
                    return Err(ApiError::forbidden(
                        "insufficient_role",
                        format!("{} needs role {} or above", perm.scope(), perm.min_role().as_str()),
                    ));
                }
                Ok(org)
            }
        }
    }

    /// `(actor_type, actor_id)` for the audit log.
    pub fn actor(&self) -> (&'static str, &str) {
        match &self.principal {
            Principal::Admin => ("admin", "admin"),
            Principal::Key { key_id, .. } => ("api_key", key_id),
        }
    }

    /// The key's role (administrators outrank every role).
    pub fn role(&self) -> Role {
        match &self.principal {
            Principal::Admin => Role::Owner,
            Principal::Key { role, .. } => *role,
        }
    }

    /// Whether the caller holds every scope in `wanted` (a key cannot mint a stronger one).
    pub fn holds_scopes(&self, wanted: &[String]) -> bool {
        match &self.principal {
            Principal::Admin => true,
            Principal::Key { scopes, .. } => {
                scopes.iter().any(|s| s == "*") || wanted.iter().all(|w| w != "*" && scopes.contains(w))
            }
        }
    }
}

/// An API key as handed out once: `alk_<prefix>_<secret>`.
pub struct NewKey {
    pub prefix: String,
    pub secret_hash: Vec<u8>,
    pub plaintext: String,
}

const PREFIX_LEN: usize = 12;
/// 32 base62 characters: 190 bits.
const SECRET_LEN: usize = 32;

pub fn generate_key() -> NewKey {
    use rand::Rng;
    use rand::distributions::Alphanumeric;
    let mut rng = rand::thread_rng();
    let prefix: String =
        (0..PREFIX_LEN).map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.gen_range(0..36)])).collect();
    let secret: String = (&mut rng).sample_iter(Alphanumeric).take(SECRET_LEN).map(char::from).collect();
    NewKey { secret_hash: hash_secret(&secret), plaintext: format!("alk_{prefix}_{secret}"), prefix }
}

fn hash_secret(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

fn split_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix("alk_")?;
    let (prefix, secret) = rest.split_once('_')?;
    (prefix.len() == PREFIX_LEN && secret.len() == SECRET_LEN).then_some((prefix, secret))
}

fn unauthorized(code: &'static str, message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, code, message)
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    id: String,
    user_id: Option<String>,
    secret_hash: Vec<u8>,
    role: String,
    scopes: String,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
    last_used_at: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct RoleRow {
    role: String,
}

/// `last_used_at` is written at most this often per key, not on every request.
const LAST_USED_RESOLUTION_MS: i64 = 60_000;

/// The address a request came from, when it came over a socket.
pub fn client_ip(req: &Request) -> Option<String> {
    req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip().to_string())
}

/// Spends one unit of the authenticated caller's request budget ([`ratelimit::admit`]): 429
/// with `Retry-After` once it is spent. Runs after [`authenticate`].
pub async fn limit(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let caller = req.extensions().get::<Caller>().expect("authenticated before rate limiting");
    let key = match &caller.principal {
        Principal::Admin => "admin".to_string(),
        Principal::Key { key_id, .. } => key_id.clone(),
    };
    match ratelimit::admit(&s, &key).await {
        Ok(()) => next.run(req).await,
        Err(limited) => limited.into_response(),
    }
}

/// Resolves the bearer credential into a [`Caller`] for the routes behind it. Failures count
/// against the client address's budget ([`ratelimit::guard_auth`]), so keys cannot be tried
/// at the rate requests arrive.
pub async fn authenticate(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let ip = client_ip(&req);
    let bearer = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    // Owned: the request (whose body is not `Sync`) must not be borrowed across the lookup.
    let bearer = bearer.and_then(|v| v.strip_prefix("Bearer ")).map(str::to_string);
    let attempt = async {
        let bearer = bearer.ok_or_else(|| unauthorized("unauthenticated", "send Authorization: Bearer <API key>"))?;
        resolve(&s, &bearer, ip.as_deref()).await
    };
    let failed = |e: &ApiError| e.status == StatusCode::UNAUTHORIZED;
    let principal = match ratelimit::guard_auth(&s, ip.as_deref(), attempt, failed).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return e.into_response(),
        Err(limited) => return limited.into_response(),
    };
    let user_agent = req.headers().get(header::USER_AGENT).and_then(|v| v.to_str().ok()).map(str::to_string);
    req.extensions_mut().insert(Caller { principal, ip, user_agent });
    next.run(req).await
}

async fn resolve(s: &AppState, bearer: &str, ip: Option<&str>) -> Result<Principal, ApiError> {
    if let Some(admin) = &s.admin_key
        && aws_lc_rs::constant_time::verify_slices_are_equal(admin.as_bytes(), bearer.as_bytes()).is_ok()
    {
        return Ok(Principal::Admin);
    }
    let (prefix, secret) = split_key(bearer).ok_or_else(|| unauthorized("invalid_key", "not a valid API key"))?;
    let org =
        s.db.org_of_key("api_key", prefix).await?.ok_or_else(|| unauthorized("invalid_key", "unknown API key"))?;
    // Anybody who knows a prefix gets this far: a read that takes no write lock.
    let mut tx = s.db.begin_read(&org).await?;
    let sql = "SELECT id, user_id, secret_hash, role, scopes, expires_at, revoked_at, last_used_at \
               FROM api_keys WHERE org_id = $1 AND prefix = $2";
    let key: KeyRow = tx
        .fetch_optional(sql, args![&org, prefix])
        .await?
        .ok_or_else(|| unauthorized("invalid_key", "unknown API key"))?;
    if aws_lc_rs::constant_time::verify_slices_are_equal(&key.secret_hash, &hash_secret(secret)).is_err() {
        return Err(unauthorized("invalid_key", "unknown API key"));
    }
    let now = s.clock.now_ms();
    if key.revoked_at.is_some() {
        return Err(unauthorized("key_revoked", "this API key was revoked"));
    }
    if key.expires_at.is_some_and(|t| t <= now) {
        return Err(unauthorized("key_expired", "this API key has expired"));
    }
    let mut role = Role::parse(&key.role).unwrap_or(Role::Viewer);
    if let Some(user) = &key.user_id {
        let sql = "SELECT role FROM memberships WHERE org_id = $1 AND user_id = $2";
        let member: RoleRow = tx
            .fetch_optional(sql, args![&org, user])
            .await?
            .ok_or_else(|| unauthorized("key_orphaned", "the key's user is no longer a member"))?;
        role = role.min(Role::parse(&member.role).unwrap_or(Role::Viewer));
    }
    tx.commit().await?;
    // Only a caller holding the key writes, and at most once a minute per key.
    if key.last_used_at.is_none_or(|t| now - t >= LAST_USED_RESOLUTION_MS) {
        let mut tx = s.db.begin(&org).await?;
        let sql = "UPDATE api_keys SET last_used_at = $1, last_used_ip = $2 WHERE org_id = $3 AND id = $4";
        tx.execute(sql, args![now, ip, &org, &key.id]).await?;
        tx.commit().await?;
    }
    let scopes = serde_json::from_str(&key.scopes).unwrap_or_default();
    Ok(Principal::Key { org, key_id: key.id, role, scopes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_documented_shape_and_verify_by_hash() {
        let k = generate_key();
        let (prefix, secret) = split_key(&k.plaintext).unwrap();
        assert_eq!(prefix, k.prefix);
        assert_eq!(hash_secret(secret), k.secret_hash);
        assert!(split_key("alk_short_x").is_none());
        assert!(split_key(&k.plaintext.replace("alk_", "xyz_")).is_none());
    }

    #[test]
    fn role_and_scope_both_gate() {
        let caller = |role, scopes: &[&str]| Caller {
            principal: Principal::Key {
                org: "org_1".into(),
                key_id: "key_1".into(),
                role,
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
            },
            ip: None,
            user_agent: None,
        };
        assert_eq!(caller(Role::Member, &["*"]).require(Perm::RoomsWrite).unwrap(), "org_1");
        assert_eq!(caller(Role::Viewer, &["*"]).require(Perm::RoomsWrite).unwrap_err().code, "insufficient_role");
        assert_eq!(caller(Role::Owner, &["rooms:read"]).require(Perm::RoomsWrite).unwrap_err().code, "missing_scope");
        assert!(caller(Role::Admin, &["rooms:read"]).holds_scopes(&["rooms:read".into()]));
        assert!(!caller(Role::Admin, &["rooms:read"]).holds_scopes(&["*".into()]));
        assert!(parse_scopes(&["rooms:read".into(), "*".into()]).is_ok());
        assert_eq!(parse_scopes(&["rooms:fly".into()]).unwrap_err().code, "invalid_scope");
    }
}
