//! What mps knows about users besides their messages: tags and attributes, which audiences
//! select on (set by the back end), and preferences about vendor push (set by the back end or
//! by the user's own client).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use mps_proto::{
    AttributesRequest, Preferences, PreferencesRequest, TagsRequest, UserAttributes,
    UserPreferences, UserTags,
};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{Admin, ApiError, Body, Client, Params};
use crate::audience;
use crate::auth::DEFAULT_APP;
use crate::http::CommonErrors;
use crate::state::ServerState;
use crate::store::TermSet;
use crate::words::check_name;

/// `?app=` of the reading routes.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AppQuery {
    /// The app (default `default`).
    app: Option<String>,
}

/// The app (default `default`) and user of a request, checked.
fn app_and_user(app: Option<String>, user: &str) -> Result<String, ApiError> {
    let app = app.unwrap_or_else(|| DEFAULT_APP.to_owned());
    check_name("app", &app)?;
    check_name("user", user)?;
    Ok(app)
}

/// Terms of `set`, with their key when they are attributes.
async fn read_terms(
    state: &ServerState,
    app: &str,
    user: &str,
    set: TermSet,
) -> Result<Vec<String>, ApiError> {
    let terms = state.engine.store().terms(app, user).await?;
    Ok(terms.into_iter().filter(|t| set.holds(t)).collect())
}

fn tags_of(terms: Vec<String>) -> Vec<String> {
    terms
        .into_iter()
        .filter_map(|t| t.strip_prefix(TermSet::TAG_PREFIX).map(str::to_owned))
        .collect()
}

fn attributes_of(terms: Vec<String>) -> BTreeMap<String, String> {
    terms
        .into_iter()
        .filter_map(|t| t.split_once(':').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}

/// A user's tags.
#[utoipa::path(
    get,
    operation_id = "get_user_tags",
    path = "/api/v1/users/{user}/tags",
    tag = "users",
    security(("admin_key" = [])),
    params(("user" = String, Path, description = "The user"), AppQuery),
    responses(
        (status = 200, description = "The user's tags, sorted", body = UserTags),
        CommonErrors,
    ),
)]
pub async fn get_tags(
    _: Admin,
    State(state): State<Arc<ServerState>>,
    Path(user): Path<String>,
    Params(query): Params<AppQuery>,
) -> Result<Json<UserTags>, ApiError> {
    let app = app_and_user(query.app, &user)?;
    let terms = read_terms(&state, &app, &user, TermSet::Tags).await?;
    Ok(Json(UserTags {
        app,
        user,
        tags: tags_of(terms),
    }))
}

/// Replace a user's tags.
///
/// Answers with the stored set, sorted.
#[utoipa::path(
    put,
    operation_id = "set_user_tags",
    path = "/api/v1/users/{user}/tags",
    tag = "users",
    security(("admin_key" = [])),
    params(("user" = String, Path, description = "The user")),
    request_body = TagsRequest,
    responses(
        (status = 200, description = "The stored tags", body = UserTags),
        CommonErrors,
    ),
)]
pub async fn put_tags(
    _: Admin,
    State(state): State<Arc<ServerState>>,
    Path(user): Path<String>,
    Body(request): Body<TagsRequest>,
) -> Result<Json<UserTags>, ApiError> {
    let app = app_and_user(request.app, &user)?;
    let terms =
        audience::tag_terms(&request.tags).map_err(|e| ApiError::invalid("invalid_tags", e))?;
    state
        .engine
        .store()
        .set_terms(&app, &user, TermSet::Tags, terms.clone())
        .await?;
    Ok(Json(UserTags {
        app,
        user,
        tags: tags_of(terms),
    }))
}

/// A user's attributes.
#[utoipa::path(
    get,
    operation_id = "get_user_attributes",
    path = "/api/v1/users/{user}/attributes",
    tag = "users",
    security(("admin_key" = [])),
    params(("user" = String, Path, description = "The user"), AppQuery),
    responses(
        (status = 200, description = "The user's attributes", body = UserAttributes),
        CommonErrors,
    ),
)]
pub async fn get_attributes(
    _: Admin,
    State(state): State<Arc<ServerState>>,
    Path(user): Path<String>,
    Params(query): Params<AppQuery>,
) -> Result<Json<UserAttributes>, ApiError> {
    let app = app_and_user(query.app, &user)?;
    let terms = read_terms(&state, &app, &user, TermSet::Attributes).await?;
    Ok(Json(UserAttributes {
        app,
        user,
        attributes: attributes_of(terms),
    }))
}

/// Replace a user's attributes.
///
/// Answers with the stored set.
#[utoipa::path(
    put,
    operation_id = "set_user_attributes",
    path = "/api/v1/users/{user}/attributes",
    tag = "users",
    security(("admin_key" = [])),
    params(("user" = String, Path, description = "The user")),
    request_body = AttributesRequest,
    responses(
        (status = 200, description = "The stored attributes", body = UserAttributes),
        CommonErrors,
    ),
)]
pub async fn put_attributes(
    _: Admin,
    State(state): State<Arc<ServerState>>,
    Path(user): Path<String>,
    Body(request): Body<AttributesRequest>,
) -> Result<Json<UserAttributes>, ApiError> {
    let app = app_and_user(request.app, &user)?;
    let terms = audience::attribute_terms(request.attributes.iter())
        .map_err(|e| ApiError::invalid("invalid_attributes", e))?;
    state
        .engine
        .store()
        .set_terms(&app, &user, TermSet::Attributes, terms)
        .await?;
    Ok(Json(UserAttributes {
        app,
        user,
        attributes: request.attributes,
    }))
}

fn preferences_answer(app: String, user: String, preferences: Preferences) -> UserPreferences {
    UserPreferences {
        app,
        user,
        muted_components: preferences.muted_components,
        muted_channels: preferences.muted_channels,
        quiet_hours: preferences.quiet_hours,
        channels: preferences.channels,
    }
}

async fn read_preferences(
    state: &ServerState,
    app: String,
    user: String,
) -> Result<Json<UserPreferences>, ApiError> {
    let found = state
        .engine
        .store()
        .preferences(&app, std::slice::from_ref(&user))
        .await?;
    let preferences = found.into_iter().next().map(|(_, p)| p).unwrap_or_default();
    Ok(Json(preferences_answer(app, user, preferences)))
}

async fn write_preferences(
    state: &ServerState,
    app: String,
    user: String,
    request: PreferencesRequest,
) -> Result<Json<UserPreferences>, ApiError> {
    let preferences = crate::preferences::check(request)
        .map_err(|e| ApiError::invalid("invalid_preferences", e))?;
    state
        .engine
        .store()
        .set_preferences(&app, &user, preferences.clone())
        .await?;
    Ok(Json(preferences_answer(app, user, preferences)))
}

/// A user's preferences about vendor push.
#[utoipa::path(
    get,
    operation_id = "get_user_preferences",
    path = "/api/v1/users/{user}/preferences",
    tag = "users",
    security(("admin_key" = [])),
    params(("user" = String, Path, description = "The user"), AppQuery),
    responses(
        (status = 200, description = "The user's preferences", body = UserPreferences),
        CommonErrors,
    ),
)]
pub async fn get_preferences(
    _: Admin,
    State(state): State<Arc<ServerState>>,
    Path(user): Path<String>,
    Params(query): Params<AppQuery>,
) -> Result<Json<UserPreferences>, ApiError> {
    let app = app_and_user(query.app, &user)?;
    read_preferences(&state, app, user).await
}

/// Replace a user's preferences about vendor push.
///
/// Answers with what is stored.
#[utoipa::path(
    put,
    operation_id = "set_user_preferences",
    path = "/api/v1/users/{user}/preferences",
    tag = "users",
    security(("admin_key" = [])),
    params(("user" = String, Path, description = "The user")),
    request_body = PreferencesRequest,
    responses(
        (status = 200, description = "The stored preferences", body = UserPreferences),
        CommonErrors,
    ),
)]
pub async fn put_preferences(
    _: Admin,
    State(state): State<Arc<ServerState>>,
    Path(user): Path<String>,
    Body(mut request): Body<PreferencesRequest>,
) -> Result<Json<UserPreferences>, ApiError> {
    let app = app_and_user(request.app.take(), &user)?;
    write_preferences(&state, app, user, request).await
}

/// The token's user reads their own preferences.
#[utoipa::path(
    get,
    operation_id = "get_my_preferences",
    path = "/api/v1/me/preferences",
    tag = "users",
    security(("client_token" = [])),
    responses(
        (status = 200, description = "The user's preferences", body = UserPreferences),
        CommonErrors,
    ),
)]
pub async fn get_my_preferences(
    Client(identity): Client,
    State(state): State<Arc<ServerState>>,
) -> Result<Json<UserPreferences>, ApiError> {
    read_preferences(&state, identity.app, identity.user).await
}

/// The token's user replaces their own preferences (in the token's app).
#[utoipa::path(
    put,
    operation_id = "set_my_preferences",
    path = "/api/v1/me/preferences",
    tag = "users",
    security(("client_token" = [])),
    request_body = PreferencesRequest,
    responses(
        (status = 200, description = "The stored preferences", body = UserPreferences),
        CommonErrors,
    ),
)]
pub async fn put_my_preferences(
    Client(identity): Client,
    State(state): State<Arc<ServerState>>,
    Body(request): Body<PreferencesRequest>,
) -> Result<Json<UserPreferences>, ApiError> {
    if request.app.as_ref().is_some_and(|app| *app != identity.app) {
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "forbidden",
            "a client token sets preferences in its own app only",
        ));
    }
    write_preferences(&state, identity.app, identity.user, request).await
}
