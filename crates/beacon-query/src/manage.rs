//! Managing a site's goals and saved funnels over HTTP:
//! `GET|PUT|DELETE /api/v1/sites/{site}/goals[/{name}]` and
//! `…/funnels[/{name}]`. Listing takes a read key (or a manage key); changes
//! need one of the site's `manage_keys`. Goals from the config file are listed
//! with `"source": "config"` and cannot be changed here.

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use beacon_core::Goal;
use serde_json::{Value, json};

use crate::analysis::funnel;
use crate::analysis::goals::{Source, shown, site_goals};
use crate::definitions::{self, Kind, MAX_PER_SITE, SavedFunnel};
use crate::error::QueryError;
use crate::http::bearer;
use crate::{Op, QueryNode};

pub const GOALS_ROUTE: &str = "/api/v1/sites/{site}/goals";
pub const GOAL_ROUTE: &str = "/api/v1/sites/{site}/goals/{name}";
pub const FUNNELS_ROUTE: &str = "/api/v1/sites/{site}/funnels";
pub const FUNNEL_ROUTE: &str = "/api/v1/sites/{site}/funnels/{name}";
/// The goals report's path: `GET …/goals/report` (so a goal named `report`
/// is read from the list, and changed at this path with PUT and DELETE).
pub const REPORT_NAME: &str = "report";

/// The routes, for `http::router` to add.
pub fn routes() -> Router<QueryNode> {
    Router::new()
        .route(GOALS_ROUTE, get(list_goals))
        .route(GOAL_ROUTE, get(get_goal).put(put_goal).delete(delete_goal))
        .route(FUNNELS_ROUTE, get(list_funnels))
        .route(
            FUNNEL_ROUTE,
            get(get_funnel).put(put_funnel).delete(delete_funnel),
        )
}

fn json_response(status: StatusCode, value: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

fn respond(result: Result<(StatusCode, Value), QueryError>) -> Response {
    match result {
        Ok((status, value)) => json_response(status, value),
        Err(e) => e.into_response(),
    }
}

impl QueryNode {
    /// May `key` change `site`'s definitions? 401/404 as for reading, and 403
    /// (saying how to get one) without one of the site's manage keys.
    fn manage(&self, key: Option<&str>, site: &str) -> Result<(), QueryError> {
        let key = key.ok_or_else(|| {
            QueryError::unauthorized(
                "a manage key is required: send it as Authorization: Bearer <manage key>",
            )
        })?;
        let configured = self
            .definitions
            .site(site)
            .ok_or_else(|| QueryError::not_found(format!("no site {site:?}")))?;
        if configured.manage_keys.is_empty() {
            return Err(QueryError::forbidden(format!(
                "site {site:?} has no manage_keys, so its goals and funnels cannot be changed through the API: \
                 add manage_keys = [\"<a key of 16+ characters>\"] to its [[sites]] entry in the config, \
                 or define goals there under [[sites.goals]]"
            )));
        }
        if configured.manage_keys.iter().any(|k| k.expose() == key) {
            return Ok(());
        }
        Err(QueryError::forbidden(format!(
            "this key may not change site {site:?}: changes need one of its manage_keys"
        )))
    }

    /// May `key` list `site`'s definitions? A read key of the site, or a manage key.
    fn list(&self, key: Option<&str>, site: &str) -> Result<(), QueryError> {
        if self.manage(key, site).is_ok() {
            return Ok(());
        }
        self.keys.check(key, site)
    }
}

async fn list_goals(
    State(node): State<QueryNode>,
    Path(site): Path<String>,
    headers: HeaderMap,
) -> Response {
    respond(
        async {
            node.list(bearer(&headers), &site)?;
            let goals: Vec<Value> = site_goals(&node, &site)
                .await?
                .iter()
                .map(|(g, s)| shown(g, *s))
                .collect();
            Ok((StatusCode::OK, json!({"goals": goals})))
        }
        .await,
    )
}

async fn get_goal(
    State(node): State<QueryNode>,
    Path((site, name)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    if name == REPORT_NAME {
        return crate::http::respond(&node, Op::Goals, &headers, Some(&site), query).await;
    }
    respond(
        async {
            node.list(bearer(&headers), &site)?;
            site_goals(&node, &site)
                .await?
                .iter()
                .find(|(g, _)| g.name == name)
                .map(|(g, s)| (StatusCode::OK, json!({"goal": shown(g, *s)})))
                .ok_or_else(|| QueryError::not_found(format!("no goal {name:?} on site {site:?}")))
        }
        .await,
    )
}

/// A definition's body: an object whose `name`, if given, is the path's,
/// read as a `T`; what does not read says the `shape` a `what` has.
fn named_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
    name: &str,
    what: &str,
    shape: &str,
) -> Result<T, QueryError> {
    let mut value: Value = serde_json::from_slice(body)
        .map_err(|e| QueryError::bad_request(format!("the body must be a JSON {what}: {e}")))?;
    let Some(fields) = value.as_object_mut() else {
        return Err(QueryError::bad_request(format!(
            "the body must be a JSON object describing the {what}"
        )));
    };
    match fields.get("name") {
        None => {
            fields.insert("name".into(), json!(name));
        }
        Some(Value::String(given)) if given == name => {}
        Some(given) => {
            return Err(QueryError::bad_request(format!(
                "name {given} in the body differs from the path's {name:?}"
            )));
        }
    }
    serde_json::from_value(value)
        .map_err(|e| QueryError::bad_request(format!("a {what} is {shape}: {e}")))
}

async fn put_goal(
    State(node): State<QueryNode>,
    Path((site, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Response {
    respond(
        async {
            node.manage(bearer(&headers), &site)?;
            let goal: Goal = named_body(
                &body,
                &name,
                "goal",
                r#"{"event": "signup"} or {"path": "/pricing*"}, optionally with "props": {"plan": "pro"}"#,
            )?;
            let problems = goal.problems();
            if !problems.is_empty() {
                return Err(QueryError::bad_request(problems.join("; ")));
            }
            let existing = site_goals(&node, &site).await?;
            if existing
                .iter()
                .any(|(g, s)| g.name == name && *s == Source::Config)
            {
                return Err(QueryError::conflict(format!(
                    "goal {name:?} is defined in the config file; change it there"
                )));
            }
            let is_new = !existing.iter().any(|(g, _)| g.name == name);
            if is_new && definitions::count(&node.js, Kind::Goal, &site).await? >= MAX_PER_SITE {
                return Err(QueryError::bad_request(format!(
                    "site {site:?} has {MAX_PER_SITE} goals made through the API, the most it may have: delete one first"
                )));
            }
            definitions::put_goal(&node.js, &site, &goal).await?;
            let status = if is_new { StatusCode::CREATED } else { StatusCode::OK };
            Ok((status, json!({"goal": shown(&goal, Source::Api)})))
        }
        .await,
    )
}

async fn delete_goal(
    State(node): State<QueryNode>,
    Path((site, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    respond(
        async {
            node.manage(bearer(&headers), &site)?;
            let configured = node
                .definitions
                .site(&site)
                .is_some_and(|c| c.goals.iter().any(|g| g.name == name));
            if configured {
                return Err(QueryError::conflict(format!(
                    "goal {name:?} is defined in the config file; remove it there"
                )));
            }
            if definitions::delete(&node.js, Kind::Goal, &site, &name).await? {
                Ok((StatusCode::OK, json!({"deleted": name})))
            } else {
                Err(QueryError::not_found(format!(
                    "no goal {name:?} made through the API on site {site:?}"
                )))
            }
        }
        .await,
    )
}

async fn list_funnels(
    State(node): State<QueryNode>,
    Path(site): Path<String>,
    headers: HeaderMap,
) -> Response {
    respond(
        async {
            node.list(bearer(&headers), &site)?;
            let funnels = definitions::funnels(&node.js, &site).await?;
            Ok((StatusCode::OK, json!({"funnels": funnels})))
        }
        .await,
    )
}

async fn get_funnel(
    State(node): State<QueryNode>,
    Path((site, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    respond(
        async {
            node.list(bearer(&headers), &site)?;
            definitions::funnels(&node.js, &site)
                .await?
                .into_iter()
                .find(|f| f.name == name)
                .map(|f| (StatusCode::OK, json!({"funnel": f})))
                .ok_or_else(|| {
                    QueryError::not_found(format!("no saved funnel {name:?} on site {site:?}"))
                })
        }
        .await,
    )
}

async fn put_funnel(
    State(node): State<QueryNode>,
    Path((site, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Response {
    respond(
        async {
            node.manage(bearer(&headers), &site)?;
            let saved: SavedFunnel = named_body(
                &body,
                &name,
                "funnel",
                r#"{"steps": ["event:signup", "path:/pricing*"], "window": "1d"}"#,
            )?;
            let blank = name.trim().is_empty() || name.trim() != name;
            if blank || name.chars().count() > beacon_core::goal::MAX_NAME_CHARS {
                return Err(QueryError::bad_request(
                    "a funnel's name must be 1 to 100 characters without spaces around it",
                ));
            }
            funnel::check(&saved)?;
            let is_new = !definitions::exists(&node.js, Kind::Funnel, &site, &name).await?;
            if is_new && definitions::count(&node.js, Kind::Funnel, &site).await? >= MAX_PER_SITE {
                return Err(QueryError::bad_request(format!(
                    "site {site:?} has {MAX_PER_SITE} saved funnels, the most it may have: delete one first"
                )));
            }
            definitions::put_funnel(&node.js, &site, &saved).await?;
            let status = if is_new { StatusCode::CREATED } else { StatusCode::OK };
            Ok((status, json!({"funnel": saved})))
        }
        .await,
    )
}

async fn delete_funnel(
    State(node): State<QueryNode>,
    Path((site, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    respond(
        async {
            node.manage(bearer(&headers), &site)?;
            if definitions::delete(&node.js, Kind::Funnel, &site, &name).await? {
                Ok((StatusCode::OK, json!({"deleted": name})))
            } else {
                Err(QueryError::not_found(format!(
                    "no saved funnel {name:?} on site {site:?}"
                )))
            }
        }
        .await,
    )
}
