//! Orgs. The admin key creates one together with its first owner and that owner's API key;
//! from then on the org manages itself with its keys.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{check_len, not_found};
use crate::api::Body;
use crate::api::audit::{self, Change};
use crate::api::auth::{Caller, Perm, Principal, Role, generate_key};
use crate::api::state::AppState;
use crate::args;
use crate::error::ApiError;
use crate::ids::record_id;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/orgs", post(create)).route("/v1/orgs/{id}", get(read).patch(update))
}

#[derive(Serialize, sqlx::FromRow)]
pub struct Org {
    pub id: String,
    pub name: String,
    #[serde(serialize_with = "super::raw_json")]
    pub metadata: String,
    /// Where the org's webhooks go (JSON array text).
    #[serde(serialize_with = "super::raw_json")]
    pub webhook_urls: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateOrg {
    name: String,
    owner_email: String,
    #[serde(default)]
    owner_name: String,
}

async fn create(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<CreateOrg>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if !matches!(caller.principal, Principal::Admin) {
        return Err(ApiError::forbidden("admin_only", "only the admin key creates orgs"));
    }
    check_len("name", &req.name, 128)?;
    super::check_email(&req.owner_email)?;
    let now = s.clock.now_ms();
    let org = record_id("org", now);
    let user = record_id("usr", now);
    let key_id = record_id("key", now);
    let key = generate_key();
    let mut tx = s.db.begin(&org).await?;
    tx.execute(
        "INSERT INTO orgs (id, name, metadata, created_at, updated_at) VALUES ($1, $2, '{}', $3, $3)",
        args![&org, req.name.trim(), now],
    )
    .await?;
    tx.execute(
        "INSERT INTO users (id, org_id, email, display_name, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5)",
        args![&user, &org, req.owner_email.trim(), req.owner_name.trim(), now],
    )
    .await?;
    tx.execute(
        "INSERT INTO memberships (org_id, user_id, role, created_at, updated_at) VALUES ($1, $2, 'owner', $3, $3)",
        args![&org, &user, now],
    )
    .await?;
    super::keys::insert(
        &mut tx,
        &org,
        &key_id,
        Some(&user),
        "owner key",
        &key,
        Role::Owner,
        &["*".into()],
        None,
        "admin",
        None,
        now,
    )
    .await?;
    let (lk_key, lk_secret) = super::livekit_keys::create(&mut tx, &s.secrets, &org, "default", now).await?;
    let after = json!({ "name": req.name.trim(), "owner": user, "key": key_id, "livekit_key": lk_key });
    audit::commit(
        tx,
        &caller,
        &org,
        now,
        Change { action: "org.create", target_type: "org", target_id: Some(&org), before: None, after: Some(after) },
    )
    .await?;
    s.livekit.tokens.add(lk_key.clone(), lk_secret.clone(), org.clone());
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "org": { "id": org, "name": req.name.trim(), "metadata": {}, "created_at": now, "updated_at": now },
            "owner": { "id": user, "email": req.owner_email.trim(), "role": "owner" },
            "api_key": { "id": key_id, "prefix": key.prefix, "key": key.plaintext },
            "livekit_key": { "api_key": lk_key, "api_secret": lk_secret },
        })),
    ))
}

async fn load(tx: &mut crate::db::Tx, org: &str) -> Result<Org, ApiError> {
    let sql = "SELECT id, name, metadata, webhook_urls, created_at, updated_at FROM orgs \
               WHERE id = $1 AND deleted_at IS NULL";
    tx.fetch_optional(sql, args![org]).await?.ok_or_else(|| not_found("org"))
}

async fn read(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Org>, ApiError> {
    let org = caller.require(Perm::OrgRead)?;
    if id != org {
        return Err(not_found("org"));
    }
    let mut tx = s.db.begin(org).await?;
    let o = load(&mut tx, org).await?;
    tx.commit().await?;
    Ok(Json(o))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateOrg {
    name: Option<String>,
    metadata: Option<Value>,
    webhook_urls: Option<Vec<String>>,
}

/// The most webhook endpoints an org may have.
const MAX_WEBHOOK_URLS: usize = 5;

/// `http(s)://host…` URLs, at most [`MAX_WEBHOOK_URLS`], as JSON text.
fn webhook_urls_text(urls: Option<&Vec<String>>) -> Result<Option<String>, ApiError> {
    let Some(urls) = urls else { return Ok(None) };
    if urls.len() > MAX_WEBHOOK_URLS {
        let msg = format!("at most {MAX_WEBHOOK_URLS} webhook URLs");
        return Err(ApiError::unprocessable("invalid_field", msg));
    }
    for u in urls {
        let ok = u.len() <= 2048
            && reqwest::Url::parse(u).is_ok_and(|p| matches!(p.scheme(), "http" | "https") && p.host_str().is_some());
        if !ok {
            return Err(ApiError::unprocessable("invalid_field", "webhook URLs must be http(s) URLs with a host"));
        }
    }
    Ok(Some(serde_json::to_string(urls).expect("strings serialize")))
}

async fn update(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Body(req): Body<UpdateOrg>,
) -> Result<Json<Org>, ApiError> {
    let org = caller.require(Perm::OrgWrite)?;
    if id != org {
        return Err(not_found("org"));
    }
    if let Some(n) = &req.name {
        check_len("name", n, 128)?;
    }
    let metadata = super::metadata_text(req.metadata.as_ref())?;
    let webhook_urls = webhook_urls_text(req.webhook_urls.as_ref())?;
    let now = s.clock.now_ms();
    let mut tx = s.db.begin(org).await?;
    let before = load(&mut tx, org).await?;
    let sql = "UPDATE orgs SET name = COALESCE($1, name), metadata = COALESCE($2, metadata), \
               webhook_urls = COALESCE($3, webhook_urls), updated_at = $4 WHERE id = $5";
    tx.execute(sql, args![req.name.as_deref().map(str::trim), metadata, webhook_urls, now, org]).await?;
    let after = load(&mut tx, org).await?;
    audit::commit(
        tx,
        &caller,
        org,
        now,
        Change {
            action: "org.update",
            target_type: "org",
            target_id: Some(org),
            before: Some(
                json!({ "name": before.name, "metadata": before.metadata, "webhook_urls": before.webhook_urls }),
            ),
            after: Some(json!({ "name": after.name, "metadata": after.metadata, "webhook_urls": after.webhook_urls })),
        },
    )
    .await?;
    Ok(Json(after))
}
