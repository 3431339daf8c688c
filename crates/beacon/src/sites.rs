//! `beacon sites`: add a site or a domain, list sites, show and rotate keys, by
//! editing the config file in place (its comments and order stay as written),
//! and print the script tag a page needs.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use beacon_core::subject::is_valid_site_id;
use clap::{Args, Subcommand};
use toml_edit::{Array, ArrayOfTables, DocumentMut, Item, Table, value};

use crate::config::{self, CONFIG_FILE, Config, Overrides};

pub use beacon_core::site::ANY_DOMAIN;

#[derive(Debug, Subcommand)]
pub enum SitesCommand {
    /// Add a site with new keys, or domains to an existing site; print its script tag.
    Add {
        /// The site id: lowercase letters, digits, - and _.
        name: String,
        /// A domain whose pages may send events (repeatable), e.g. shop.example.com.
        #[arg(long = "domain")]
        domains: Vec<String>,
    },
    /// List the sites, their domains and how many keys each has.
    List,
    /// Print a site's keys in full, and its script tag.
    Keys { name: String },
    /// Replace a site's write keys (or read keys) with a new one.
    RotateKey {
        name: String,
        /// Rotate the read key instead of the write key.
        #[arg(long)]
        read: bool,
        /// Keep the old keys working beside the new one (remove them later by hand).
        #[arg(long)]
        keep_old: bool,
    },
}

#[derive(Debug, Args)]
pub struct SitesArgs {
    #[command(subcommand)]
    pub command: SitesCommand,
}

/// The config file `sites` edits: the one `load` would read, else a new one in
/// the data directory (where `beacon up` looks for it).
fn config_path(overrides: &Overrides) -> PathBuf {
    let data_dir = overrides
        .data_dir
        .clone()
        .unwrap_or_else(|| Config::default().data_dir);
    overrides.config.clone().unwrap_or_else(|| {
        [PathBuf::from(CONFIG_FILE), data_dir.join(CONFIG_FILE)]
            .into_iter()
            .find(|p| p.is_file())
            .unwrap_or_else(|| data_dir.join(CONFIG_FILE))
    })
}

pub fn run(overrides: &Overrides, args: SitesArgs) -> anyhow::Result<()> {
    let path = config_path(overrides);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut doc: DocumentMut = text
        .parse()
        .with_context(|| format!("{} is not valid TOML", path.display()))?;
    let edited = match &args.command {
        SitesCommand::Add { name, domains } => add(&mut doc, name, domains)?,
        SitesCommand::RotateKey {
            name,
            read,
            keep_old,
        } => rotate(&mut doc, name, *read, *keep_old)?,
        SitesCommand::List | SitesCommand::Keys { .. } => false,
    };
    if edited {
        save(&path, overrides, &doc.to_string())?;
    }
    let loaded = config::load(&Overrides {
        config: path.is_file().then(|| path.clone()),
        ..overrides.clone()
    })
    .map_err(anyhow::Error::msg)?;
    let config = loaded.config;
    let find = |name: &str| {
        config
            .sites
            .iter()
            .find(|s| s.id == name)
            .with_context(|| format!("no site is called {name:?} in {}", path.display()))
    };
    match args.command {
        SitesCommand::List => {
            for site in &config.sites {
                let domains = if site.domains.is_empty() {
                    "(no domains: only keyed senders)".to_owned()
                } else {
                    site.domains.join(", ")
                };
                println!(
                    "{:<16} {} write key(s), {} read key(s)   domains: {domains}",
                    site.id,
                    site.write_keys.len(),
                    site.read_keys.len()
                );
            }
            if config.sites.is_empty() {
                println!("no sites yet: beacon sites add NAME --domain example.com");
            }
        }
        SitesCommand::Keys { name } => {
            let site = find(&name)?;
            for key in &site.write_keys {
                println!("write key  {}", key.expose());
            }
            for key in &site.read_keys {
                println!("read key   {}", key.expose());
            }
            print_tag(&config, &site.id);
        }
        SitesCommand::Add { name, .. } => {
            let site = find(&name)?;
            println!("Site {:?} in {}", site.id, path.display());
            println!("  domains    {}", site.domains.join(", "));
            println!("  (keys: beacon sites keys {})", site.id);
            print_tag(&config, &site.id);
            println!("\nRestart beacon to apply: it reads its sites at start-up.");
        }
        SitesCommand::RotateKey { name, read, .. } => {
            let site = find(&name)?;
            let (kind, key) = if read {
                ("read", site.read_keys.first())
            } else {
                ("write", site.write_keys.first())
            };
            if let Some(key) = key {
                println!("new {kind} key for {}: {}", site.id, key.expose());
            }
            println!("Restart beacon to apply: it reads its keys at start-up.");
        }
    }
    Ok(())
}

/// Write `text` only if it is a config Beacon accepts, so a bad name or domain
/// never leaves a file `beacon up` would refuse.
fn save(path: &Path, overrides: &Overrides, text: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let trial = dir.path().join(CONFIG_FILE);
    std::fs::write(&trial, text)?;
    config::load(&Overrides {
        config: Some(trial),
        ..overrides.clone()
    })
    .map_err(anyhow::Error::msg)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn new_key(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

fn sites(doc: &mut DocumentMut) -> anyhow::Result<&mut ArrayOfTables> {
    let item = doc
        .entry("sites")
        .or_insert(Item::ArrayOfTables(ArrayOfTables::new()));
    item.as_array_of_tables_mut()
        .context("`sites` in the config is not a list of [[sites]] tables")
}

fn site<'a>(doc: &'a mut DocumentMut, name: &str) -> anyhow::Result<Option<&'a mut Table>> {
    Ok(sites(doc)?
        .iter_mut()
        .find(|t| t.get("id").and_then(Item::as_str) == Some(name)))
}

/// Add a site, or the domains to an existing one. A real domain replaces `*`
/// (which the first start's site has so that any page is counted).
fn add(doc: &mut DocumentMut, name: &str, domains: &[String]) -> anyhow::Result<bool> {
    if !is_valid_site_id(name) {
        bail!("{name:?} is not a valid site id (lowercase letters, digits, - and _, at most 64)");
    }
    let domains: Vec<String> = domains
        .iter()
        .map(|d| d.trim().to_ascii_lowercase())
        .collect();
    if let Some(table) = site(doc, name)? {
        if domains.is_empty() {
            return Ok(false);
        }
        let list = table
            .entry("domains")
            .or_insert(value(Array::new()))
            .as_array_mut()
            .context("the site's `domains` is not a list")?;
        if domains.iter().any(|d| d != ANY_DOMAIN) {
            list.retain(|d| d.as_str() != Some(ANY_DOMAIN));
        }
        for domain in domains {
            if !list.iter().any(|d| d.as_str() == Some(domain.as_str())) {
                list.push(domain);
            }
        }
        return Ok(true);
    }
    let mut table = Table::new();
    table.insert("id", value(name));
    table.insert("write_keys", value(Array::from_iter([new_key("wk")])));
    table.insert("read_keys", value(Array::from_iter([new_key("rk")])));
    table.insert("domains", value(Array::from_iter(domains)));
    sites(doc)?.push(table);
    Ok(true)
}

fn rotate(doc: &mut DocumentMut, name: &str, read: bool, keep_old: bool) -> anyhow::Result<bool> {
    let Some(table) = site(doc, name)? else {
        bail!("no site is called {name:?}");
    };
    let (field, prefix) = if read {
        ("read_keys", "rk")
    } else {
        ("write_keys", "wk")
    };
    let keys = table
        .entry(field)
        .or_insert(value(Array::new()))
        .as_array_mut()
        .with_context(|| format!("the site's `{field}` is not a list"))?;
    if !keep_old {
        keys.clear();
    }
    // First: the key the collector counts browser events against.
    keys.insert(0, new_key(prefix));
    Ok(true)
}

/// What to paste into a page.
pub fn print_tag(config: &Config, site: &str) {
    println!("\nPaste into every page, before </head>:");
    println!("  {}", script_tag(config, site));
}

pub fn script_tag(config: &Config, site: &str) -> String {
    script_tag_at(config.collector.listen, site)
}

/// The one-line tag for a collector at `addr`.
pub fn script_tag_at(addr: std::net::SocketAddr, site: &str) -> String {
    format!("<script defer data-site=\"{site}\" src=\"http://{addr}/js/beacon.js\"></script>")
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMENTED: &str = "# my sites\n[collector]\nlisten = \"127.0.0.1:9000\" # here\n\n[[sites]]\n# the shop\nid = \"shop\"\nwrite_keys = [\"wk_shop_0000000000000\"]\ndomains = [\"*\"]\n";

    #[test]
    fn adding_keeps_comments_and_order_and_a_real_domain_replaces_any() {
        let mut doc: DocumentMut = COMMENTED.parse().expect("toml");
        assert!(add(&mut doc, "shop", &["Shop.example".into()]).expect("added"));
        assert!(add(&mut doc, "blog", &["blog.example".into()]).expect("added"));
        let text = doc.to_string();
        assert!(
            text.starts_with("# my sites\n[collector]\nlisten = \"127.0.0.1:9000\" # here\n"),
            "{text}"
        );
        assert!(text.contains("# the shop\nid = \"shop\""), "{text}");
        assert!(text.contains("domains = [\"shop.example\"]"), "{text}");
        assert!(
            text.find("id = \"shop\"") < text.find("id = \"blog\""),
            "{text}"
        );
        assert!(add(&mut doc, "Bad Name", &[]).is_err());
    }

    #[test]
    fn rotating_replaces_or_keeps_the_old_key() {
        let mut doc: DocumentMut = COMMENTED.parse().expect("toml");
        rotate(&mut doc, "shop", false, true).expect("rotated");
        let keys = |doc: &mut DocumentMut| -> Vec<String> {
            site(doc, "shop").expect("sites").expect("shop")["write_keys"]
                .as_array()
                .expect("array")
                .iter()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect()
        };
        let kept = keys(&mut doc);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[1], "wk_shop_0000000000000");
        rotate(&mut doc, "shop", false, false).expect("rotated");
        let fresh = keys(&mut doc);
        assert_eq!(fresh.len(), 1);
        assert!(!kept.contains(&fresh[0]) && fresh[0].starts_with("wk_"));
        assert!(rotate(&mut doc, "nope", false, false).is_err());
    }
}
