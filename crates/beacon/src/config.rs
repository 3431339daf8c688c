//! Beacon's configuration: embedded defaults → TOML file → `BEACON_*` environment
//! → command-line flags, into one typed struct, checked once with every problem
//! reported together.

use std::path::{Path, PathBuf};

use beacon_actions::ActionsSettings;
use beacon_aggregate::{AggregatorSettings, StoreSettings};
use beacon_core::{Limits, Site, site_problems};
use beacon_ingest::{CollectorSettings, EnrichSettings, NormalizerSettings};
use beacon_nats::{NatsConfig, RetryPolicy, StreamSettings};
use beacon_query::QuerySettings;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Name of the config file Beacon looks for in the working and data directories.
pub const CONFIG_FILE: &str = "beacon.toml";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where `beacon up` keeps its NATS store and generated config.
    pub data_dir: PathBuf,
    pub nats: NatsConfig,
    pub streams: StreamSettings,
    pub limits: Limits,
    pub publish: RetryPolicy,
    pub collector: CollectorSettings,
    pub enrich: EnrichSettings,
    pub normalizer: NormalizerSettings,
    pub aggregator: AggregatorSettings,
    pub query: QuerySettings,
    pub store: StoreSettings,
    pub actions: ActionsSettings,
    pub sites: Vec<Site>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("beacon-data"),
            nats: NatsConfig::default(),
            streams: StreamSettings::default(),
            limits: Limits::default(),
            publish: RetryPolicy::default(),
            collector: CollectorSettings::default(),
            enrich: EnrichSettings::default(),
            normalizer: NormalizerSettings::default(),
            aggregator: AggregatorSettings::default(),
            query: QuerySettings::default(),
            store: StoreSettings::default(),
            actions: ActionsSettings::default(),
            sites: Vec::new(),
        }
    }
}

/// Values given on the command line; they win over file and environment.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub nats_urls: Vec<String>,
    pub listen: Option<std::net::SocketAddr>,
}

/// A loaded config and the file it came from, if any.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub file: Option<PathBuf>,
}

/// Load and check the configuration. `Err` holds every problem, one per line.
pub fn load(overrides: &Overrides) -> Result<Loaded, String> {
    let data_dir = overrides
        .data_dir
        .clone()
        .unwrap_or_else(|| Config::default().data_dir);
    let file = match &overrides.config {
        Some(path) if !path.is_file() => {
            return Err(format!("config file {} does not exist", path.display()));
        }
        Some(path) => Some(path.clone()),
        None => [PathBuf::from(CONFIG_FILE), data_dir.join(CONFIG_FILE)]
            .into_iter()
            .find(|p| p.is_file()),
    };
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = &file {
        figment = figment.merge(Toml::file_exact(path));
    }
    // Nested settings use a double underscore (BEACON_COLLECTOR__LISTEN); other
    // BEACON_* variables belong to the command line, not the file.
    figment = figment.merge(
        Env::prefixed("BEACON_")
            .filter(|k| k.as_str().contains("__") || k == "data_dir")
            .split("__"),
    );
    if let Some(dir) = &overrides.data_dir {
        figment = figment.merge(Serialized::default("data_dir", dir));
    }
    if !overrides.nats_urls.is_empty() {
        figment = figment.merge(Serialized::default("nats.urls", &overrides.nats_urls));
    }
    if let Some(listen) = overrides.listen {
        figment = figment.merge(Serialized::default("collector.listen", listen));
    }
    let config: Config = figment.extract().map_err(|e| {
        let lines: Vec<String> = e.into_iter().map(|e| format!("  - {e}")).collect();
        format!("configuration problems:\n{}", lines.join("\n"))
    })?;
    let problems = config.problems();
    if !problems.is_empty() {
        let origin = file
            .as_deref()
            .map(|f| format!(" (in {})", f.display()))
            .unwrap_or_default();
        return Err(format!(
            "configuration problems{origin}:\n{}",
            problems
                .iter()
                .map(|p| format!("  - {p}"))
                .collect::<Vec<_>>()
                .join("\n")
        ));
    }
    Ok(Loaded { config, file })
}

/// Directory of the segment cache under the data directory, unless
/// `query.segment_cache.dir` says otherwise.
pub const SEGMENT_CACHE_DIR: &str = "segment-cache";

impl Config {
    /// The query settings with the segment cache's directory resolved.
    pub fn query_settings(&self) -> beacon_query::QuerySettings {
        let mut settings = self.query.clone();
        if settings.segment_cache.dir.is_none() {
            settings.segment_cache.dir = Some(self.data_dir.join(SEGMENT_CACHE_DIR));
        }
        settings
    }

    /// Everything wrong with this configuration, all at once.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = self.nats.problems();
        problems.extend(self.streams.problems());
        problems.extend(site_problems(&self.sites));
        problems.extend(self.aggregator.problems());
        problems.extend(self.store.problems());
        problems.extend(self.collector.problems());
        problems.extend(self.actions.problems(&self.sites));
        if self.actions.grace >= self.streams.duplicate_window {
            problems.push(
                "actions.grace must be shorter than streams.duplicate_window, or two copies of the actions service may fire one window twice"
                    .to_owned(),
            );
        }
        if self.limits.max_batch_events == 0 || self.limits.max_event_bytes == 0 {
            problems.push(
                "limits.max_batch_events and limits.max_event_bytes must be positive".to_owned(),
            );
        }
        if self.collector.max_body_bytes < self.limits.max_event_bytes {
            problems.push(
                "collector.max_body_bytes must be at least limits.max_event_bytes".to_owned(),
            );
        }
        if self.publish.deadline < self.publish.attempt_timeout {
            problems.push("publish.deadline must be at least publish.attempt_timeout".to_owned());
        }
        if self.query.sql.max_rows == 0 || self.query.sql.memory_bytes == 0 {
            problems
                .push("query.sql.max_rows and query.sql.memory_bytes must be positive".to_owned());
        }
        if self.query.sql.timeout.is_zero() {
            problems.push("query.sql.timeout must be positive".to_owned());
        }
        if self.query.tail_max_rows == 0 {
            problems.push("query.tail_max_rows must be positive".to_owned());
        }
        if self.normalizer.max_deliver < 1 {
            problems.push("normalizer.max_deliver must be at least 1".to_owned());
        }
        problems
    }
}

/// A site with fresh keys, written to `<data_dir>/beacon.toml` on a first `beacon up`.
pub fn write_starter_config(data_dir: &Path) -> std::io::Result<(PathBuf, Site)> {
    let site = Site {
        id: "default".to_owned(),
        write_keys: vec![format!("wk_{}", uuid::Uuid::new_v4().simple()).into()],
        read_keys: vec![format!("rk_{}", uuid::Uuid::new_v4().simple()).into()],
        rate_limit: 10_000,
        rate_burst: 0,
        domains: vec![crate::sites::ANY_DOMAIN.to_owned()],
        keep_bots: false,
        manage_keys: vec![],
        goals: vec![],
    };
    let text = format!(
        "# Created by `beacon up`. Edit freely (or with `beacon sites`): Beacon reads it at start-up.\n\
         # Every setting and its default: docs/CONFIG.md.\n\n\
         [[sites]]\nid = \"{}\"\nwrite_keys = [\"{}\"]\nread_keys = [\"{}\"]\n\
         # \"*\": pages on any domain may send events, until `beacon sites add default --domain D` names yours.\n\
         domains = [\"*\"]\n",
        site.id,
        site.write_keys[0].expose(),
        site.read_keys[0].expose()
    );
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join(CONFIG_FILE);
    std::fs::write(&path, text)?;
    Ok((path, site))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported_at_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("beacon.toml");
        std::fs::write(
            &path,
            "[streams]\npartitions = 0\n[collector]\ntrusted_proxies = [\"10.0.0.0/8\", \"lb.local\"]\n[[sites]]\nid = \"Bad Site\"\nwrite_keys = [\"short\"]\n",
        )
        .expect("write config");
        let err = load(&Overrides {
            config: Some(path),
            ..Overrides::default()
        })
        .expect_err("config is refused");
        assert!(err.contains("partitions"), "{err}");
        assert!(err.contains("not a valid site id"), "{err}");
        assert!(err.contains("at least 16"), "{err}");
        assert!(err.contains("trusted_proxies: \"lb.local\""), "{err}");
    }

    #[test]
    fn store_settings_are_read_and_checked() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("beacon.toml");
        std::fs::write(
            &path,
            "[store]\nflush_rows = 50000\nflush_interval = \"10s\"\nretention = \"400days\"\n",
        )
        .expect("write config");
        let loaded = load(&Overrides {
            config: Some(path.clone()),
            ..Overrides::default()
        })
        .expect("config loads");
        let store = &loaded.config.store;
        assert!(store.enabled && store.compaction);
        assert_eq!(store.flush_rows, 50_000);
        assert_eq!(store.flush_interval, std::time::Duration::from_secs(10));
        assert_eq!(
            store.retention,
            Some(std::time::Duration::from_secs(400 * 86_400))
        );

        std::fs::write(&path, "[store]\nflush_rows = 0\nretention = \"5m\"\n")
            .expect("write config");
        let err = load(&Overrides {
            config: Some(path),
            ..Overrides::default()
        })
        .expect_err("config is refused");
        assert!(err.contains("store.flush_rows must be 1 to"), "{err}");
        assert!(err.contains("store.retention must be at least 1h"), "{err}");
    }

    #[test]
    fn bad_goals_are_refused_with_the_rest() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("beacon.toml");
        std::fs::write(
            &path,
            "[[sites]]\nid = \"shop\"\nwrite_keys = [\"wk_3f9c2a7b1e8d4c60a5b2\"]\n\
             manage_keys = [\"wk_3f9c2a7b1e8d4c60a5b2\"]\n\
             [[sites.goals]]\nname = \"Both\"\nevent = \"a\"\npath = \"/a\"\n\
             [[sites.goals]]\nname = \"Twice\"\nevent = \"a\"\n\
             [[sites.goals]]\nname = \"Twice\"\npath = \"pricing\"\n",
        )
        .expect("write config");
        let err = load(&Overrides {
            config: Some(path),
            ..Overrides::default()
        })
        .expect_err("config is refused");
        for expected in [
            "goal \"Both\": give exactly one of event",
            "goal \"Twice\" is defined twice",
            "must start with / or *",
            "a manage key is also a write key",
        ] {
            assert!(err.contains(expected), "{expected}: {err}");
        }
    }

    #[test]
    fn unknown_settings_are_refused_by_name() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("beacon.toml");
        std::fs::write(&path, "[collector]\nlisten_on = \"127.0.0.1:1\"\n").expect("write config");
        let err = load(&Overrides {
            config: Some(path),
            ..Overrides::default()
        })
        .expect_err("config is refused");
        assert!(err.contains("listen_on"), "{err}");
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("beacon.toml");
        std::fs::write(&path, "[nats]\nurls = [\"nats://file:4222\"]\n").expect("write config");
        let loaded = load(&Overrides {
            config: Some(path),
            nats_urls: vec!["nats://flag:4222".into()],
            ..Overrides::default()
        })
        .expect("config loads");
        assert_eq!(loaded.config.nats.urls, vec!["nats://flag:4222".to_owned()]);
    }

    /// The first TOML block of a doc page.
    fn toml_example(doc: &str) -> String {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../docs")
                .join(doc),
        )
        .expect("doc page");
        let start = text.find("```toml\n").expect("a TOML example") + "```toml\n".len();
        let len = text[start..].find("```").expect("its end");
        text[start..start + len].to_owned()
    }

    #[test]
    fn the_documented_actions_rules_load() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("beacon.toml");
        let site = "[[sites]]\nid = \"shop\"\nwrite_keys = [\"wk_3f9c2a7b1e8d4c60a5b2\"]\nread_keys = [\"rk_8e1d0c4b7a2f9e35c6d1\"]\n";
        std::fs::write(&path, format!("{site}{}", toml_example("ACTIONS.md"))).expect("write");
        let loaded = load(&Overrides {
            config: Some(path),
            ..Overrides::default()
        })
        .expect("the example is valid");
        assert_eq!(loaded.config.actions.rules.len(), 4);
        assert!(loaded.config.actions.smtp.is_some());
    }

    #[test]
    fn actions_rules_are_checked_with_the_rest() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("beacon.toml");
        std::fs::write(
            &path,
            "[[actions.rules]]\nid = \"r\"\nsite = \"nope\"\nkind = \"threshold\"\nwebhook = \"ftp://x\"\n",
        )
        .expect("write");
        let err = load(&Overrides {
            config: Some(path),
            ..Overrides::default()
        })
        .expect_err("refused");
        for expected in [
            "site \"nope\" is not configured",
            "window is required",
            "not an http:// or https:// URL",
        ] {
            assert!(err.contains(expected), "{expected}: {err}");
        }
    }

    #[test]
    fn the_documented_example_config_reads_and_resolves_the_segment_cache() {
        let doc = include_str!("../../../docs/CONFIG.md");
        let example = doc
            .split("## Example `beacon.toml`")
            .nth(1)
            .and_then(|rest| rest.split("```toml\n").nth(1))
            .and_then(|rest| rest.split("```").next())
            .expect("an example in docs/CONFIG.md");
        let config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(example))
            .extract()
            .expect("the example reads");
        assert_eq!(config.query.sql.max_rows, 50_000);
        assert_eq!(config.query.sql.timeout, std::time::Duration::from_secs(10));
        let shop = &config.sites[0];
        let goals: Vec<&str> = shop.goals.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(goals, ["Signup", "Pricing", "Pro purchase"]);
        assert_eq!(shop.goals[1].path.as_deref(), Some("/pricing*"));
        assert_eq!(
            shop.goals[2].props.get("plan").map(String::as_str),
            Some("pro")
        );
        assert_eq!(shop.manage_keys.len(), 1);
        assert!(beacon_core::site_problems(&config.sites).is_empty());
        assert_eq!(
            config.query_settings().segment_cache.dir,
            Some(PathBuf::from("/var/cache/beacon/segments"))
        );
        let defaults = Config::default().query_settings();
        assert_eq!(
            defaults.segment_cache.dir,
            Some(PathBuf::from("beacon-data").join(SEGMENT_CACHE_DIR))
        );
    }

    #[test]
    fn starter_config_loads_and_has_distinct_keys() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (path, site) = write_starter_config(dir.path()).expect("written");
        let loaded = load(&Overrides {
            config: Some(path),
            ..Overrides::default()
        })
        .expect("loads");
        assert_eq!(loaded.config.sites, vec![site]);
    }
}
