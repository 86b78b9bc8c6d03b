//! Users of an org and their role in it (the membership).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{check_email, check_len, not_found, open};
use crate::api::Body;
use crate::api::audit::{self, Change};
use crate::api::auth::{Caller, Perm, Role};
use crate::api::state::AppState;
use crate::args;
use crate::db::Tx;
use crate::error::ApiError;
use crate::ids::record_id;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/users", get(list).post(create))
        .route("/v1/users/{id}", get(read).patch(update).delete(remove))
}

#[derive(Serialize, sqlx::FromRow, Clone)]
struct User {
    id: String,
    email: String,
    display_name: String,
    role: String,
    created_at: i64,
}

/// The org's live users with their roles, then `$tail`.
macro_rules! select_users {
    ($tail:literal) => {
        concat!(
            "SELECT u.id, u.email, u.display_name, m.role, u.created_at FROM users u ",
            "JOIN memberships m ON m.org_id = u.org_id AND m.user_id = u.id ",
            "WHERE u.org_id = $1 AND u.deleted_at IS NULL",
            $tail
        )
    };
}

async fn list(State(s): State<AppState>, Extension(caller): Extension<Caller>) -> Result<Json<Value>, ApiError> {
    let org = caller.require(Perm::UsersRead)?;
    let mut tx = s.db.begin(org).await?;
    let users: Vec<User> = tx.fetch_all(select_users!(" ORDER BY u.id"), args![org]).await?;
    tx.commit().await?;
    Ok(Json(json!({ "users": users })))
}

async fn load(tx: &mut Tx, org: &str, id: &str) -> Result<User, ApiError> {
    tx.fetch_optional(select_users!(" AND u.id = $2"), args![org, id]).await?.ok_or_else(|| not_found("user"))
}

/// A caller may hand out roles up to its own.
fn grantable(caller: &Caller, role: &str) -> Result<Role, ApiError> {
    let role = Role::parse(role)
        .ok_or_else(|| ApiError::unprocessable("invalid_field", "role must be owner, admin, member or viewer"))?;
    if role > caller.role() {
        return Err(ApiError::forbidden(
            "insufficient_role",
            format!("cannot grant {} above your own role", role.as_str()),
        ));
    }
    Ok(role)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    email: String,
    #[serde(default)]
    display_name: String,
    role: String,
}

async fn create(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<CreateUser>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    let org = caller.require(Perm::UsersWrite)?;
    check_email(&req.email)?;
    if req.display_name.len() > 128 {
        return Err(ApiError::unprocessable("invalid_field", "display_name must be at most 128 characters"));
    }
    let role = grantable(&caller, &req.role)?;
    let now = s.clock.now_ms();
    let id = record_id("usr", now);
    let mut tx = s.db.begin(org).await?;
    tx.execute(
        "INSERT INTO users (id, org_id, email, display_name, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5)",
        args![&id, org, req.email.trim(), req.display_name.trim(), now],
    )
    .await?;
    tx.execute(
        "INSERT INTO memberships (org_id, user_id, role, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)",
        args![org, &id, role.as_str(), now],
    )
    .await?;
    let user = load(&mut tx, org, &id).await?;
    audit::commit(
        tx,
        &caller,
        org,
        now,
        Change {
            action: "user.create",
            target_type: "user",
            target_id: Some(&id),
            before: None,
            after: Some(json!(user)),
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(user)))
}

async fn read(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<User>, ApiError> {
    let org = caller.require(Perm::UsersRead)?;
    let mut tx = s.db.begin(org).await?;
    let user = load(&mut tx, org, &id).await?;
    tx.commit().await?;
    Ok(Json(user))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateUser {
    display_name: Option<String>,
    role: Option<String>,
}

/// Owners stay: the last one cannot be demoted or removed.
async fn keep_an_owner(tx: &mut Tx, org: &str, user: &User) -> Result<(), ApiError> {
    #[derive(sqlx::FromRow)]
    struct Count {
        n: i64,
    }
    if user.role != "owner" {
        return Ok(());
    }
    // Two owners demoting each other at once must not both see the other one still there:
    // touching the org row serializes them (a row lock until commit on PostgreSQL, where
    // each statement then sees what the other committed; SQLite transactions are already
    // one writer at a time).
    tx.execute("UPDATE orgs SET updated_at = updated_at WHERE id = $1", args![org]).await?;
    let sql = "SELECT COUNT(*) AS n FROM memberships WHERE org_id = $1 AND role = 'owner'";
    let owners: Count = tx.fetch_one(sql, args![org]).await?;
    if owners.n <= 1 {
        return Err(ApiError::conflict("last_owner", "an org keeps at least one owner"));
    }
    Ok(())
}

/// Changing somebody's membership needs a role at least theirs.
fn outranks(caller: &Caller, user: &User) -> Result<(), ApiError> {
    if Role::parse(&user.role).is_some_and(|r| r > caller.role()) {
        return Err(ApiError::forbidden("insufficient_role", "cannot change a member above your own role"));
    }
    Ok(())
}

async fn update(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Body(req): Body<UpdateUser>,
) -> Result<Json<User>, ApiError> {
    let org = caller.require(Perm::UsersWrite)?;
    if let Some(n) = &req.display_name {
        check_len("display_name", n, 128)?;
    }
    let role = req.role.as_deref().map(|r| grantable(&caller, r)).transpose()?;
    let now = s.clock.now_ms();
    let mut tx = s.db.begin(org).await?;
    let before = load(&mut tx, org, &id).await?;
    outranks(&caller, &before)?;
    if let Some(role) = role {
        if role != Role::Owner {
            keep_an_owner(&mut tx, org, &before).await?;
        }
        let sql = "UPDATE memberships SET role = $1, updated_at = $2 WHERE org_id = $3 AND user_id = $4";
        tx.execute(sql, args![role.as_str(), now, org, &id]).await?;
    }
    if let Some(n) = &req.display_name {
        let sql = "UPDATE users SET display_name = $1, updated_at = $2 WHERE org_id = $3 AND id = $4";
        tx.execute(sql, args![n.trim(), now, org, &id]).await?;
    }
    let after = load(&mut tx, org, &id).await?;
    audit::commit(
        tx,
        &caller,
        org,
        now,
        Change {
            action: "user.update",
            target_type: "user",
            target_id: Some(&id),
            before: Some(json!(before)),
            after: Some(json!(after)),
        },
    )
    .await?;
    Ok(Json(after))
}

/// Removes the user from the org: the membership goes, the user row is kept (soft-deleted)
/// for the history that names it, and its API keys are revoked with every key they minted.
async fn remove(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (org, now, mut tx) = open(&s, &caller, Perm::UsersWrite).await?;
    let before = load(&mut tx, org, &id).await?;
    outranks(&caller, &before)?;
    keep_an_owner(&mut tx, org, &before).await?;
    tx.execute("DELETE FROM memberships WHERE org_id = $1 AND user_id = $2", args![org, &id]).await?;
    tx.execute("UPDATE users SET deleted_at = $1, updated_at = $1 WHERE org_id = $2 AND id = $3", args![now, org, &id])
        .await?;
    let revoked = super::keys::revoke_lineage(&mut tx, &caller, org, super::keys::Lineage::User(&id), now).await?;
    audit::commit(
        tx,
        &caller,
        org,
        now,
        Change {
            action: "user.remove",
            target_type: "user",
            target_id: Some(&id),
            before: Some(json!(before)),
            after: Some(json!({ "revoked_keys": revoked })),
        },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
