//! The SQL engine (DataFusion) over a site's segments and the tail.
//!
//! Each query gets a session of its own whose catalog holds exactly one table,
//! the view `events`: the site's rows, and nothing else (the planner's
//! [`Engine::staged`] runs add in-memory tables of its own steps, and a
//! query's `WITH` tables that it names more than once are kept the same way,
//! each in that query's session only). Under it, a scan reads
//! the segments the manifests say may hold the site's rows in the time range
//! the query's predicates on `ts` allow (a question about yesterday opens
//! only yesterday's segments), plus the in-memory tail, all from one
//! [`Snapshot`] so each event is read once. Only a single `SELECT` runs: no
//! DDL, DML, `COPY`, `SET` or other statements, no URL tables, no
//! information_schema. Every query is bounded in rows, time and memory.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::context::Context;
use async_trait::async_trait;
use bytes::Bytes;
use datafusion::arrow::array::{Array, ArrayData, RecordBatch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::{MemTable, ViewTable, provider_as_source};
use datafusion::error::DataFusionError;
use datafusion::execution::cache::TableScopedPath;
use datafusion::execution::cache::cache_manager::{
    CacheManagerConfig, CachedFileMetadata, CachedFileMetadataEntry, FileMetadataCache,
    FileStatisticsCache,
};
use datafusion::execution::cache::default_cache::DefaultCache;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::{
    Between, BinaryExpr, Expr, LogicalPlan, LogicalPlanBuilder, Operator,
    TableProviderFilterPushDown, TableType, col, lit,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::union::UnionExec;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use datafusion::sql::parser::Statement;
use datafusion::sql::sqlparser::ast;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use crate::cache::{CacheError, Pinned, SegmentCache};
use crate::manifest::SEGMENT_BUCKET;
use crate::output::{ExportEncoder, ExportFormat, SqlFormat, encode_answer};
use crate::schema::{SEGMENT_FORMAT_VERSION, plain_text, read_schema, recast};
use crate::view::{Snapshot, StoreView};

/// The limits of one SQL query: the `[query.sql]` section of the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqlLimits {
    /// Rows an answer may hold; a query that would return more is refused.
    pub max_rows: usize,
    /// Time a query may run, from parsing to the last row.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Memory the operators of one query may hold (sorts, joins, aggregates).
    pub memory_bytes: usize,
}

impl Default for SqlLimits {
    fn default() -> Self {
        SqlLimits {
            max_rows: 100_000,
            timeout: Duration::from_secs(30),
            memory_bytes: 512 << 20,
        }
    }
}

/// What went wrong with a query, decided where it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SqlErrorKind {
    /// The SQL does not parse or plan (a typo, an unknown table or column).
    Invalid,
    /// Not a single `SELECT`: the SQL API only reads.
    ReadOnly,
    RowLimit,
    TimeLimit,
    MemoryLimit,
    /// Segments cannot be fetched now, or the store is not followed: retry.
    Unavailable,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SqlError {
    pub kind: SqlErrorKind,
    pub message: String,
}

impl SqlError {
    fn new(kind: SqlErrorKind, message: impl Into<String>) -> Self {
        SqlError {
            kind,
            message: message.into(),
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.kind == SqlErrorKind::Unavailable
    }
}

/// Faults of the engine's own parts, carried through DataFusion by kind.
#[derive(Debug, thiserror::Error)]
enum Fault {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(
        "segment {name} has format {found}; this build reads up to {SEGMENT_FORMAT_VERSION}: upgrade beacon"
    )]
    TooNew { name: String, found: u32 },
}

fn classify(e: DataFusionError) -> SqlError {
    let message = e.to_string();
    match e.find_root() {
        DataFusionError::ResourcesExhausted(_) => SqlError::new(
            SqlErrorKind::MemoryLimit,
            format!(
                "the query needs more memory than its limit (query.sql.memory_bytes): {message}"
            ),
        ),
        DataFusionError::External(inner) if inner.downcast_ref::<Fault>().is_some() => {
            SqlError::new(SqlErrorKind::Unavailable, message)
        }
        _ => SqlError::new(SqlErrorKind::Invalid, message),
    }
}

/// The cache files a query holds, released when it is dropped.
type Pins = Arc<Mutex<Vec<Pinned>>>;

/// A SQL answer, encoded.
#[derive(Debug, Clone)]
pub struct Answer {
    pub format: SqlFormat,
    pub body: Bytes,
    pub rows: usize,
}

/// The engine of a query node: the store view, the segment cache and limits.
#[derive(Debug, Clone)]
pub struct Engine {
    js: Context,
    view: StoreView,
    cache: SegmentCache,
    limits: SqlLimits,
    footers: Footers,
}

/// Parquet footers and page indexes of the cached segment files, parsed
/// once and shared by every query's session (each query has a runtime of its
/// own, for its own memory limit, which would otherwise start with an empty
/// cache and parse every footer again). Entries are checked against the
/// file's size and modification time, so a file fetched again is read again.
#[derive(Clone)]
struct Footers {
    metadata: Arc<FileMetadataCache>,
    statistics: Arc<FileStatisticsCache>,
}

impl std::fmt::Debug for Footers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Footers").finish_non_exhaustive()
    }
}

/// Memory for [`Footers`]: a footer with its page index is tens of KB, so
/// thousands of segments fit.
const FOOTER_CACHE_BYTES: usize = 128 << 20;
const STATISTICS_CACHE_BYTES: usize = 32 << 20;

impl Footers {
    fn new() -> Self {
        Footers {
            metadata: Arc::new(
                DefaultCache::<datafusion::object_store::path::Path, CachedFileMetadataEntry>::new(
                    FOOTER_CACHE_BYTES,
                )
                .with_name("beacon segment footers"),
            ),
            statistics: Arc::new(
                DefaultCache::<TableScopedPath, CachedFileMetadata>::new(STATISTICS_CACHE_BYTES)
                    .with_name("beacon segment statistics"),
            ),
        }
    }

    fn config(&self) -> CacheManagerConfig {
        CacheManagerConfig::default()
            .with_file_metadata_cache(Some(self.metadata.clone()))
            .with_metadata_cache_limit(FOOTER_CACHE_BYTES)
            .with_file_statistics_cache(Some(self.statistics.clone()))
            .with_file_statistics_cache_limit(STATISTICS_CACHE_BYTES)
    }
}

impl Engine {
    pub fn new(js: Context, view: StoreView, cache: SegmentCache, limits: SqlLimits) -> Self {
        Engine {
            js,
            view,
            cache,
            limits,
            footers: Footers::new(),
        }
    }

    pub fn view(&self) -> &StoreView {
        &self.view
    }

    pub fn cache(&self) -> &SegmentCache {
        &self.cache
    }

    /// Segment files whose statistics are kept across queries.
    pub fn kept_file_statistics(&self) -> usize {
        self.footers.statistics.len()
    }

    pub fn limits(&self) -> &SqlLimits {
        &self.limits
    }

    /// Fetch the newest committed segments into the cache before any query
    /// asks for them ([`SegmentCache::prefetch`]); the number fetched.
    pub async fn prefetch(&self) -> Result<usize, CacheError> {
        let segments = self.view.segments();
        self.cache
            .prefetch(&segments, || segment_bucket(self.js.clone()))
            .await
    }

    /// Whether queries can be answered: the manifests present at start-up are read.
    fn ready(&self) -> Result<(), SqlError> {
        if let Some(reason) = self.view.failure() {
            return Err(SqlError::new(
                SqlErrorKind::Unavailable,
                format!("this node no longer follows the event store: {reason}"),
            ));
        }
        if !self.view.is_loaded() {
            return Err(SqlError::new(
                SqlErrorKind::Unavailable,
                "this query node is still loading the event store; try again in a moment",
            ));
        }
        Ok(())
    }

    /// A session whose only table is `events`: `site`'s rows.
    fn session(&self, site: &str) -> Result<(SessionContext, Pins), SqlError> {
        let runtime = RuntimeEnvBuilder::new()
            .with_cache_manager(self.footers.config())
            .with_memory_limit(self.limits.memory_bytes, 1.0)
            // No spilling: the memory limit is a limit, not a reason to fill the disk.
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()
            .map_err(classify)?;
        let mut config = SessionConfig::new()
            .with_information_schema(false)
            .with_target_partitions(2);
        config.options_mut().execution.parquet.pushdown_filters = true;
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        ctx.register_udf(crate::trunc::date_trunc());
        let pins = Arc::new(Mutex::new(Vec::new()));
        let rows = SiteRows {
            snapshot: self.view.snapshot(site, i64::MIN, i64::MAX),
            cache: self.cache.clone(),
            js: self.js.clone(),
            pins: pins.clone(),
        };
        let plan = LogicalPlanBuilder::scan("events", provider_as_source(Arc::new(rows)), None)
            .and_then(|b| b.filter(col("site").eq(lit(site))))
            .and_then(LogicalPlanBuilder::build)
            .map_err(classify)?;
        ctx.register_table("events", Arc::new(ViewTable::new(plan, None)))
            .map_err(classify)?;
        Ok((ctx, pins))
    }

    /// Answer `sql` over `site`'s events in `format`.
    pub async fn sql(&self, site: &str, sql: &str, format: SqlFormat) -> Result<Answer, SqlError> {
        self.ready()?;
        let run = async {
            let (ctx, pins) = self.session(site)?;
            let (steps, shared) = shared_tables(&ctx, sql);
            if steps.is_empty() {
                return self.answer(&ctx, sql, format).await;
            }
            match keep(&ctx, &steps).await {
                Ok(_kept) => return self.answer(&ctx, &shared, format).await,
                // Held in memory, the shared tables outgrew the limit that
                // reading them again wherever they are named may keep to.
                Err(e) if e.kind == SqlErrorKind::MemoryLimit => {}
                Err(e) => return Err(e),
            }
            drop((ctx, pins));
            let (ctx, _pins) = self.session(site)?;
            self.answer(&ctx, sql, format).await
        };
        self.bounded(run).await
    }

    /// `sql`'s rows in `ctx`, encoded in `format`.
    async fn answer(
        &self,
        ctx: &SessionContext,
        sql: &str,
        format: SqlFormat,
    ) -> Result<Answer, SqlError> {
        let plan = select(ctx, sql).await?;
        answer(ctx, plan, self.limits.max_rows, format).await
    }

    /// Answer several `queries` over `site`'s events and the tables `steps`
    /// make, all in one session: each step's rows are collected, in order,
    /// into an in-memory table of its name that later steps and the queries
    /// read; then the queries run together. For the planner, whose questions
    /// read one costly intermediate (the session cut) several times; the SQL
    /// API makes steps only of a query's own shared `WITH` tables
    /// ([`shared_tables`]). Each step and query must still be a single `SELECT`; the
    /// steps' rows count against `memory_bytes`, each answer against
    /// `max_rows`, and the whole run against `timeout`.
    pub async fn staged(
        &self,
        site: &str,
        steps: &[Step],
        queries: &[String],
        format: SqlFormat,
    ) -> Result<Vec<Answer>, SqlError> {
        self.ready()?;
        let run = async {
            let (ctx, _pins) = self.session(site)?;
            let _kept = keep(&ctx, steps).await?;
            let answers = queries.iter().map(|sql| self.answer(&ctx, sql, format));
            futures::future::try_join_all(answers).await
        };
        self.bounded(run).await
    }

    /// Run `sql` over `site`'s events and hand each batch of its rows to
    /// `each` as the engine makes it (text may be string views): for callers
    /// that fold many rows into something small, so no row limit applies;
    /// the memory and time limits do.
    pub async fn scan(
        &self,
        site: &str,
        sql: &str,
        mut each: impl FnMut(&RecordBatch) + Send,
    ) -> Result<(), SqlError> {
        self.ready()?;
        let run = async {
            let (ctx, _pins) = self.session(site)?;
            let plan = select(&ctx, sql).await?;
            let frame = ctx.execute_logical_plan(plan).await.map_err(classify)?;
            let mut stream = frame.execute_stream().await.map_err(classify)?;
            while let Some(batch) = stream.next().await {
                each(&batch.map_err(classify)?);
            }
            Ok(())
        };
        self.bounded(run).await
    }

    /// `run`, stopped at the query time limit.
    async fn bounded<T>(
        &self,
        run: impl std::future::Future<Output = Result<T, SqlError>>,
    ) -> Result<T, SqlError> {
        match tokio::time::timeout(self.limits.timeout, run).await {
            Ok(answer) => answer,
            Err(_) => Err(SqlError::new(
                SqlErrorKind::TimeLimit,
                format!(
                    "the query ran longer than {:?} (query.sql.timeout) and was stopped",
                    self.limits.timeout
                ),
            )),
        }
    }

    /// How `sql` (a read-only query, as for [`Engine::sql`]) runs: DataFusion's
    /// `EXPLAIN ANALYZE`, each operator with its rows and time. For
    /// benchmarks and profiling; it runs the query once, under the same limits.
    pub async fn explain(&self, site: &str, sql: &str) -> Result<String, SqlError> {
        self.ready()?;
        let run = async {
            let (ctx, _pins) = self.session(site)?;
            let plan = select(&ctx, sql).await?;
            let batches = ctx
                .execute_logical_plan(plan)
                .await
                .and_then(|f| f.explain(false, true))
                .map_err(classify)?
                .collect()
                .await
                .map_err(classify)?;
            datafusion::arrow::util::pretty::pretty_format_batches(&batches)
                .map(|t| t.to_string())
                .map_err(|e| SqlError::new(SqlErrorKind::Invalid, e.to_string()))
        };
        tokio::time::timeout(self.limits.timeout, run)
            .await
            .unwrap_or_else(|_| {
                Err(SqlError::new(
                    SqlErrorKind::TimeLimit,
                    "explain ran out of time",
                ))
            })
    }

    /// Every row of `site` with event time in `[from_ms, to_ms)`, encoded in
    /// `format` as it is read: segments in stream order, then the tail.
    pub async fn export(
        &self,
        site: &str,
        from_ms: i64,
        to_ms: i64,
        format: ExportFormat,
    ) -> Result<impl Stream<Item = Result<Bytes, SqlError>> + Send + 'static + use<>, SqlError>
    {
        self.ready()?;
        let (ctx, pins) = self.session(site)?;
        let ms = |v: i64| {
            lit(ScalarValue::TimestampMillisecond(
                Some(v),
                Some("UTC".into()),
            ))
        };
        let frame = ctx
            .table("events")
            .await
            .and_then(|f| f.filter(col("ts").gt_eq(ms(from_ms)).and(col("ts").lt(ms(to_ms)))))
            .map_err(classify)?;
        let stream = frame.execute_stream().await.map_err(classify)?;
        let schema = plain_text(&stream.schema());
        let encoder = ExportEncoder::new(format, &schema).map_err(encoding)?;
        struct Export {
            stream: datafusion::execution::SendableRecordBatchStream,
            encoder: Option<ExportEncoder>,
            schema: SchemaRef,
            // Held until the last byte: the files being read stay in the cache.
            _pins: Pins,
            _ctx: SessionContext,
        }
        let state = Export {
            stream,
            encoder: Some(encoder),
            schema,
            _pins: pins,
            _ctx: ctx,
        };
        Ok(futures::stream::unfold(state, |mut s| async move {
            loop {
                let encoder = s.encoder.as_mut()?;
                match s.stream.next().await {
                    Some(Ok(batch)) => {
                        match recast(&batch, &s.schema).and_then(|batch| encoder.batch(&batch)) {
                            Ok(bytes) if bytes.is_empty() => continue,
                            Ok(bytes) => return Some((Ok(bytes), s)),
                            Err(e) => {
                                s.encoder = None;
                                return Some((Err(encoding(e)), s));
                            }
                        }
                    }
                    Some(Err(e)) => {
                        s.encoder = None;
                        return Some((Err(classify(e)), s));
                    }
                    None => {
                        let last = s.encoder.take()?.finish(&s.schema).map_err(encoding);
                        return Some((last, s));
                    }
                }
            }
        }))
    }
}

/// Run each of `steps`, in order, and keep its rows in `ctx` as an in-memory
/// table of its name, which later steps and queries read. The rows are held
/// beside the operators' memory, so they draw on the same pool: a step too
/// large fails as a query would. The reservation returned holds them.
async fn keep(ctx: &SessionContext, steps: &[Step]) -> Result<MemoryReservation, SqlError> {
    let kept = MemoryConsumer::new("staged steps").register(&ctx.runtime_env().memory_pool);
    let mut counted = HashSet::new();
    for step in steps {
        let started = std::time::Instant::now();
        if !is_step_name(&step.name) || ctx.table_exist(step.name.as_str()).map_err(classify)? {
            return Err(SqlError::new(
                SqlErrorKind::Invalid,
                format!("a step cannot be named {:?}", step.name),
            ));
        }
        let plan = select(ctx, &step.sql).await?;
        let frame = ctx.execute_logical_plan(plan).await.map_err(classify)?;
        let mut stream = frame.execute_stream().await.map_err(classify)?;
        let schema = stream.schema();
        let mut batches = Vec::new();
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(classify)?;
            kept.try_grow(new_bytes(&batch, &mut counted))
                .map_err(classify)?;
            batches.push(batch);
        }
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        // Which step of a slow question is slow.
        tracing::debug!(
            step = step.name,
            rows,
            ms = started.elapsed().as_millis() as u64,
            kept = kept.size(),
            "staged step"
        );
        let table = MemTable::try_new(schema, vec![batches]).map_err(classify)?;
        ctx.register_table(step.name.as_str(), Arc::new(table))
            .map_err(classify)?;
    }
    Ok(kept)
}

/// A table name a step may take: a plain SQL identifier, `[a-z_][a-z0-9_]*`.
fn is_step_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// The `WITH` tables that `sql` names more than once, as steps that compute
/// each once, and `sql` rewritten to read them as tables; no steps, if there
/// are none (or `sql` is not a plain query, which [`select`] then refuses).
/// DataFusion inlines a common table expression wherever it is named, so a
/// funnel written as steps that each read the day's events (and the step
/// before) read the same segments six times over; DuckDB keeps such a table
/// too. Only the outermost `WITH` is taken, never a recursive one, one marked
/// `NOT MATERIALIZED`, or one named like a table the session has (`events`).
fn shared_tables(ctx: &SessionContext, sql: &str) -> (Vec<Step>, String) {
    let none = || (Vec::new(), sql.to_owned());
    let state = ctx.state();
    let options = state.config().options();
    let Ok(Statement::Statement(statement)) =
        state.sql_to_statement(sql, &options.sql_parser.dialect)
    else {
        return none();
    };
    let ast::Statement::Query(mut query) = *statement else {
        return none();
    };
    let normalize = options.sql_parser.enable_ident_normalization;
    let name_of = |ident: &ast::Ident| {
        if normalize && ident.quote_style.is_none() {
            ident.value.to_lowercase()
        } else {
            ident.value.clone()
        }
    };
    let mut named: HashMap<String, usize> = HashMap::new();
    let _ = ast::visit_relations(&query, |relation| {
        if let [ast::ObjectNamePart::Identifier(ident)] = relation.0.as_slice() {
            *named.entry(name_of(ident)).or_default() += 1;
        }
        ControlFlow::<()>::Continue(())
    });
    let Some(mut with) = query.with.take().filter(|w| !w.recursive) else {
        return none();
    };
    let (mut steps, mut inline) = (Vec::new(), Vec::new());
    for cte in std::mem::take(&mut with.cte_tables) {
        let name = name_of(&cte.alias.name);
        let shared = named.get(&name).is_some_and(|n| *n > 1)
            && cte.from.is_none()
            && cte.materialized != Some(ast::CteAsMaterialized::NotMaterialized)
            && is_step_name(&name)
            && !ctx.table_exist(name.as_str()).unwrap_or(true);
        if !shared {
            inline.push(cte);
            continue;
        }
        // The step names the earlier tables still inline that it may read.
        let earlier = if inline.is_empty() {
            String::new()
        } else {
            let before = ast::With {
                cte_tables: inline.clone(),
                ..with.clone()
            };
            format!("{before} ")
        };
        let alias = ast::TableAlias {
            explicit: false,
            ..cte.alias.clone()
        };
        steps.push(Step {
            name,
            sql: format!("{earlier}SELECT * FROM ({}) AS {alias}", cte.query),
        });
    }
    if steps.is_empty() {
        return none();
    }
    if !inline.is_empty() {
        with.cte_tables = inline;
        query.with = Some(with);
    }
    (steps, query.to_string())
}

/// One step of [`Engine::staged`]: a `SELECT` whose rows become the table `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// A plain identifier (`[a-z_][a-z0-9_]*`), not a table the session has already.
    pub name: String,
    pub sql: String,
}

/// The bytes of `batch`'s buffers that `counted` does not hold yet, each
/// buffer once however many arrays slice it: an aggregate's output batches
/// are slices of one array, which `get_array_memory_size` counts once per
/// slice (hundreds of times over for a large group-by).
fn new_bytes(batch: &RecordBatch, counted: &mut HashSet<usize>) -> usize {
    fn walk(data: &ArrayData, counted: &mut HashSet<usize>) -> usize {
        let nulls = data.nulls().map(|n| n.buffer());
        let own: usize = data
            .buffers()
            .iter()
            .chain(nulls)
            .filter(|b| counted.insert(b.data_ptr().as_ptr() as usize))
            .map(|b| b.capacity())
            .sum();
        own + data
            .child_data()
            .iter()
            .map(|c| walk(c, counted))
            .sum::<usize>()
    }
    batch
        .columns()
        .iter()
        .map(|c| walk(&c.to_data(), counted))
        .sum()
}

/// `sql` planned in `ctx` if it is a single read-only `SELECT`.
async fn select(ctx: &SessionContext, sql: &str) -> Result<LogicalPlan, SqlError> {
    let state = ctx.state();
    let dialect = state.config().options().sql_parser.dialect;
    let statement = state.sql_to_statement(sql, &dialect).map_err(classify)?;
    let is_query =
        matches!(&statement, Statement::Statement(s) if matches!(**s, ast::Statement::Query(_)));
    if !is_query {
        return Err(read_only());
    }
    let plan = state.statement_to_plan(statement).await.map_err(classify)?;
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(&plan)
        .map_err(|_| read_only())?;
    Ok(plan)
}

/// `plan`'s rows encoded in `format`, refused past `max_rows`.
async fn answer(
    ctx: &SessionContext,
    plan: LogicalPlan,
    max_rows: usize,
    format: SqlFormat,
) -> Result<Answer, SqlError> {
    let frame = ctx
        .execute_logical_plan(plan)
        .await
        .and_then(|f| f.limit(0, Some(max_rows.saturating_add(1))))
        .map_err(classify)?;
    let mut stream = frame.execute_stream().await.map_err(classify)?;
    let schema = plain_text(&stream.schema());
    let (mut batches, mut rows) = (Vec::new(), 0usize);
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(classify).and_then(|b| {
            recast(&b, &schema).map_err(|e| {
                SqlError::new(
                    SqlErrorKind::Invalid,
                    format!("cannot encode the answer: {e}"),
                )
            })
        })?;
        rows += batch.num_rows();
        if rows > max_rows {
            return Err(SqlError::new(
                SqlErrorKind::RowLimit,
                format!(
                    "the answer has more than {max_rows} rows (query.sql.max_rows): aggregate, filter or add a LIMIT; use the export for raw rows"
                ),
            ));
        }
        batches.push(batch);
    }
    let body = encode_answer(format, &schema, &batches).map_err(|e| {
        SqlError::new(
            SqlErrorKind::Invalid,
            format!("cannot encode the answer as {format:?}: {e}"),
        )
    })?;
    Ok(Answer {
        format,
        body: Bytes::from(body),
        rows,
    })
}

fn read_only() -> SqlError {
    SqlError::new(
        SqlErrorKind::ReadOnly,
        "the SQL API is read-only: send one SELECT (no DDL, INSERT, UPDATE, DELETE, COPY, SET or other statements)",
    )
}

fn encoding(e: datafusion::arrow::error::ArrowError) -> SqlError {
    SqlError::new(
        SqlErrorKind::Invalid,
        format!("cannot encode the export: {e}"),
    )
}

/// The table under `events`: one site's segments and tail, unfiltered by site
/// (the view above filters exactly; here the site only prunes segments).
#[derive(Debug)]
struct SiteRows {
    snapshot: Snapshot,
    cache: SegmentCache,
    js: Context,
    pins: Pins,
}

#[async_trait]
impl TableProvider for SiteRows {
    fn schema(&self) -> SchemaRef {
        read_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        // Inexact: used to prune segments and row groups; the plan still filters.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let (from_ms, to_ms) = time_bounds(filters);
        let segments: Vec<_> = self
            .snapshot
            .segments
            .iter()
            .filter(|s| s.max_ts_ms >= from_ms && s.min_ts_ms < to_ms)
            .cloned()
            .collect();
        if let Some(s) = segments.iter().find(|s| s.format > SEGMENT_FORMAT_VERSION) {
            return Err(DataFusionError::External(Box::new(Fault::TooNew {
                name: s.name.clone(),
                found: s.format,
            })));
        }
        let mut inputs = Vec::new();
        if !segments.is_empty() {
            let (pinned, paths) = self
                .cache
                .pin(&segments, || segment_bucket(self.js.clone()))
                .await
                .map_err(|e| DataFusionError::External(Box::new(Fault::from(e))))?;
            self.pins
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(pinned);
            let urls = paths
                .iter()
                .map(|p| ListingTableUrl::parse(p.to_string_lossy()))
                .collect::<Result<Vec<_>, _>>()?;
            let options =
                ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension("");
            let config = ListingTableConfig::new_with_multi_paths(urls)
                .with_listing_options(options)
                .with_schema(read_schema());
            // Each file's statistics are read from its footer once and kept
            // across queries (`Footers`), beside the footer itself.
            let files = ListingTable::try_new(config)?
                .with_cache(state.runtime_env().cache_manager.get_file_statistic_cache());
            inputs.push(files.scan(state, projection, filters, limit).await?);
        }
        let tail = MemTable::try_new(read_schema(), vec![self.snapshot.tail.clone()])?;
        inputs.push(tail.scan(state, projection, filters, limit).await?);
        UnionExec::try_new(inputs)
    }
}

/// The object store bucket segment files are fetched from.
async fn segment_bucket(
    js: Context,
) -> Result<async_nats::jetstream::object_store::ObjectStore, String> {
    js.get_object_store(SEGMENT_BUCKET)
        .await
        .map_err(|e| e.to_string())
}

/// `[from, to)` in Unix ms that the conjunctive `filters` allow for `ts`; the
/// whole line when they say nothing usable about it.
fn time_bounds(filters: &[Expr]) -> (i64, i64) {
    let mut bounds = (i64::MIN, i64::MAX);
    for filter in filters {
        narrow(filter, &mut bounds);
    }
    bounds
}

fn narrow(expr: &Expr, bounds: &mut (i64, i64)) {
    let (from, to) = bounds;
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            if *op == Operator::And {
                narrow(left, bounds);
                narrow(right, bounds);
                return;
            }
            let (op, ms) = match (is_ts(left), millis(right), is_ts(right), millis(left)) {
                (true, Some(ms), _, _) => (*op, ms),
                (_, _, true, Some(ms)) => match op.swap() {
                    Some(op) => (op, ms),
                    None => return,
                },
                _ => return,
            };
            let (floor, ceil) = ms;
            match op {
                Operator::Gt | Operator::GtEq => *from = (*from).max(floor),
                // `ts < t`: every row is below t's ceiling in ms (t itself when whole).
                Operator::Lt => *to = (*to).min(ceil),
                Operator::LtEq => *to = (*to).min(floor.saturating_add(1)),
                Operator::Eq => {
                    *from = (*from).max(floor);
                    *to = (*to).min(floor.saturating_add(1));
                }
                _ => {}
            }
        }
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) if is_ts(expr) => {
            if let Some((floor, _)) = millis(low) {
                *from = (*from).max(floor);
            }
            if let Some((floor, _)) = millis(high) {
                *to = (*to).min(floor.saturating_add(1));
            }
        }
        _ => {}
    }
}

fn is_ts(expr: &Expr) -> bool {
    matches!(expr, Expr::Column(c) if c.name == "ts")
}

/// A timestamp literal in Unix ms, rounded down and up.
fn millis(expr: &Expr) -> Option<(i64, i64)> {
    let Expr::Literal(value, _) = expr else {
        return None;
    };
    let split = |v: i64, per_ms: i64| {
        let floor = v.div_euclid(per_ms);
        let ceil = if v.rem_euclid(per_ms) == 0 {
            floor
        } else {
            floor.saturating_add(1)
        };
        (floor, ceil)
    };
    match value {
        ScalarValue::TimestampSecond(Some(v), _) => v.checked_mul(1000).map(|ms| (ms, ms)),
        ScalarValue::TimestampMillisecond(Some(v), _) => Some((*v, *v)),
        ScalarValue::TimestampMicrosecond(Some(v), _) => Some(split(*v, 1000)),
        ScalarValue::TimestampNanosecond(Some(v), _) => Some(split(*v, 1_000_000)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts_ms(v: i64) -> Expr {
        lit(ScalarValue::TimestampMillisecond(
            Some(v),
            Some("UTC".into()),
        ))
    }

    #[test]
    fn time_bounds_come_from_predicates_on_ts_only() {
        let filters = vec![
            col("ts").gt_eq(ts_ms(1_000)),
            ts_ms(5_000).gt(col("ts")),
            col("name").eq(lit("x")),
        ];
        assert_eq!(time_bounds(&filters), (1_000, 5_000));
        let at_most = col("ts").lt_eq(ts_ms(5_000));
        assert_eq!(time_bounds(&[at_most]), (i64::MIN, 5_001));
        let below = col("ts").lt(lit(ScalarValue::TimestampNanosecond(
            Some(4_999_000_001),
            None,
        )));
        assert_eq!(time_bounds(&[below]), (i64::MIN, 5_000));
        let between = col("ts").between(
            lit(ScalarValue::TimestampNanosecond(Some(2_000_000_000), None)),
            lit(ScalarValue::TimestampSecond(Some(3), None)),
        );
        assert_eq!(time_bounds(&[between]), (2_000, 3_001));
        // An OR says nothing certain; neither does a predicate on another column.
        let either = col("ts").lt(ts_ms(10)).or(col("ts").gt(ts_ms(20)));
        assert_eq!(time_bounds(&[either]), (i64::MIN, i64::MAX));
        assert_eq!(
            time_bounds(&[col("received_at").gt(ts_ms(7))]),
            (i64::MIN, i64::MAX)
        );
    }

    fn shared(sql: &str) -> (Vec<(String, String)>, String) {
        let ctx = SessionContext::new();
        let schema = Arc::new(datafusion::arrow::datatypes::Schema::empty());
        let events = MemTable::try_new(schema, vec![vec![]]).expect("table");
        ctx.register_table("events", Arc::new(events))
            .expect("registered");
        let (steps, rest) = shared_tables(&ctx, sql);
        (steps.into_iter().map(|s| (s.name, s.sql)).collect(), rest)
    }

    #[test]
    fn with_tables_named_twice_become_steps_in_order() {
        let (steps, rest) = shared(
            "WITH d AS (SELECT a FROM events), One AS (SELECT a FROM d), \
             \"Two\" AS (SELECT a FROM d, One), t3 (b) AS (SELECT a FROM \"Two\") \
             SELECT * FROM one, t3, d, \"Two\"",
        );
        let names: Vec<&str> = steps.iter().map(|(n, _)| n.as_str()).collect();
        // `Two` is quoted, so not a plain name: it stays inline, and `t3` is named once.
        assert_eq!(names, ["d", "one"]);
        assert_eq!(steps[0].1, "SELECT * FROM (SELECT a FROM events) AS d");
        assert_eq!(steps[1].1, "SELECT * FROM (SELECT a FROM d) AS One");
        assert_eq!(
            rest,
            "WITH \"Two\" AS (SELECT a FROM d, One), t3 (b) AS (SELECT a FROM \"Two\") \
             SELECT * FROM one, t3, d, \"Two\""
        );
        // A step reads the tables still inline before it.
        let (steps, _) = shared(
            "WITH x AS (SELECT a FROM events), y (b) AS (SELECT a FROM x) SELECT * FROM y, y",
        );
        assert_eq!(steps.len(), 1);
        assert_eq!(
            steps[0].1,
            "WITH x AS (SELECT a FROM events) SELECT * FROM (SELECT a FROM x) AS y (b)"
        );
    }

    #[test]
    fn other_queries_are_left_as_written() {
        for sql in [
            "SELECT * FROM events",
            "WITH d AS (SELECT a FROM events) SELECT * FROM d",
            "WITH RECURSIVE d AS (SELECT 1 AS a) SELECT * FROM d, d",
            "WITH events AS (SELECT 1 AS a) SELECT * FROM events, events",
            "WITH d AS NOT MATERIALIZED (SELECT a FROM events) SELECT * FROM d, d",
            "DROP TABLE events",
            "SELECT * FROM (",
        ] {
            let (steps, rest) = shared(sql);
            assert!(steps.is_empty(), "{sql}: {steps:?}");
            assert_eq!(rest, sql);
        }
    }
}
