//! The rules API: list a site's rules, and create, replace or delete the
//! ones made through it, over HTTP beside the query API. Managing rules needs
//! one of the site's `actions.rule_keys`; listing also accepts a read key.
//! Secrets are never answered.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_nats::jetstream::kv;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use beacon_core::{Secret, Site};
use serde_json::{Value, json};

use crate::rule::{RuleConfig, Rules};
use crate::settings::ActionsSettings;
use crate::store;

/// What the rules API needs. Cheap to clone.
#[derive(Clone)]
pub struct RulesApi {
    store: kv::Store,
    configured: Arc<Vec<RuleConfig>>,
    sites: Arc<Vec<Site>>,
    smtp: bool,
    rule_keys: Arc<BTreeMap<String, Vec<Secret>>>,
}

impl std::fmt::Debug for RulesApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RulesApi").finish_non_exhaustive()
    }
}

impl RulesApi {
    pub fn new(store: kv::Store, settings: &ActionsSettings, sites: &[Site]) -> RulesApi {
        RulesApi {
            store,
            configured: Arc::new(settings.rules.clone()),
            sites: Arc::new(sites.to_vec()),
            smtp: settings.smtp.is_some(),
            rule_keys: Arc::new(settings.rule_keys.clone()),
        }
    }
}

/// `GET|PUT|DELETE /api/v1/sites/{site}/rules[/{id}]`.
pub fn router(api: RulesApi) -> Router {
    Router::new()
        .route("/api/v1/sites/{site}/rules", get(list))
        .route(
            "/api/v1/sites/{site}/rules/{id}",
            put(replace).delete(remove),
        )
        .with_state(api)
}

/// The API's errors, each with its status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("a key is required: send it as Authorization: Bearer <key>")]
    NoKey,
    #[error("this key may not {0} the rules of this site")]
    Forbidden(&'static str),
    #[error("no site {0:?}")]
    NoSite(String),
    #[error("no rule {0:?} made through the API on this site")]
    NoRule(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{}", .0.join("; "))]
    Invalid(Vec<String>),
    #[error("{0}")]
    Store(#[from] store::StoreError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::NoKey => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NoSite(_) | ApiError::NoRule(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApiError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        (status, Json(json!({"error": self.to_string()}))).into_response()
    }
}

#[derive(Debug, PartialEq)]
enum Access {
    Read,
    Manage,
}

impl RulesApi {
    fn access(&self, headers: &HeaderMap, site: &str) -> Result<Access, ApiError> {
        let site_config = self
            .sites
            .iter()
            .find(|s| s.id == site)
            .ok_or_else(|| ApiError::NoSite(site.to_owned()))?;
        let key = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(beacon_core::bearer::bearer_key)
            .ok_or(ApiError::NoKey)?;
        let is = |keys: &[Secret]| keys.iter().any(|k| k.expose() == key);
        if self.rule_keys.get(site).is_some_and(|keys| is(keys)) {
            Ok(Access::Manage)
        } else if is(&site_config.read_keys) {
            Ok(Access::Read)
        } else {
            Err(ApiError::Forbidden("read"))
        }
    }

    fn manage(&self, headers: &HeaderMap, site: &str) -> Result<(), ApiError> {
        match self.access(headers, site)? {
            Access::Manage => Ok(()),
            Access::Read => Err(ApiError::Forbidden("change")),
        }
    }
}

/// A rule as answered: its secret and its webhook's path and query (which
/// often hold a token) left out.
fn shown(rule: &RuleConfig, source: &str) -> Value {
    let mut value = serde_json::to_value(rule).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.retain(|_, v| !v.is_null() && *v != json!([]) && *v != json!({}));
        if object.contains_key("secret") {
            object.insert("secret".into(), json!("(set)"));
        }
        if let Some(hook) = rule
            .webhook
            .as_deref()
            .and_then(|u| url::Url::parse(u).ok())
        {
            object.insert(
                "webhook".into(),
                json!(format!("{}/…", hook.origin().ascii_serialization())),
            );
        }
        object.insert("source".into(), json!(source));
    }
    value
}

async fn list(
    State(api): State<RulesApi>,
    Path(site): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    api.access(&headers, &site)?;
    let mut rules: Vec<Value> = api
        .configured
        .iter()
        .filter(|r| r.site == site)
        .map(|r| shown(r, "config"))
        .collect();
    rules.extend(
        store::all(&api.store)
            .await?
            .iter()
            .filter(|r| r.site == site)
            .map(|r| shown(r, "api")),
    );
    Ok(Json(json!({"rules": rules})))
}

async fn replace(
    State(api): State<RulesApi>,
    Path((site, id)): Path<(String, String)>,
    headers: HeaderMap,
    Json(mut body): Json<Value>,
) -> Result<Json<Value>, ApiError> {
    api.manage(&headers, &site)?;
    let Some(fields) = body.as_object_mut() else {
        return Err(ApiError::Invalid(vec![
            "the body must be a JSON object".into(),
        ]));
    };
    // The path names the rule; the body may repeat it, not contradict it.
    for (field, value) in [("id", &id), ("site", &site)] {
        match fields.get(field).and_then(Value::as_str) {
            Some(given) if given != value => {
                return Err(ApiError::Invalid(vec![format!(
                    "{field} {given:?} in the body differs from the path"
                )]));
            }
            _ => {
                fields.insert(field.into(), json!(value));
            }
        }
    }
    let rule: RuleConfig =
        serde_json::from_value(body).map_err(|e| ApiError::Invalid(vec![e.to_string()]))?;
    if api.configured.iter().any(|r| r.id == id) {
        return Err(ApiError::Conflict(format!(
            "rule {id:?} is defined in the config file; change it there"
        )));
    }
    if store::all(&api.store)
        .await?
        .iter()
        .any(|r| r.id == id && r.site != site)
    {
        return Err(ApiError::Conflict(format!(
            "rule id {id:?} is taken by another site"
        )));
    }
    Rules::new(std::slice::from_ref(&rule), &api.sites, api.smtp).map_err(ApiError::Invalid)?;
    store::put(&api.store, &rule).await?;
    Ok(Json(json!({"rule": shown(&rule, "api")})))
}

async fn remove(
    State(api): State<RulesApi>,
    Path((site, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    api.manage(&headers, &site)?;
    if api.configured.iter().any(|r| r.id == id && r.site == site) {
        return Err(ApiError::Conflict(format!(
            "rule {id:?} is defined in the config file; remove it there"
        )));
    }
    if store::delete(&api.store, &site, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NoRule(id))
    }
}
