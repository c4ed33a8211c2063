/* test_config.c - the YAML config loader: fixtures that load, defaults, one table row per
 * error with its file:line:col, base_url and value forms, and secret resolution.
 * Run from the project root (fixtures live in tests/data/config). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/config.h"

#define FIXTURES "tests/data/config/"

static const struct config zero_config;

static int load(const char *yaml, struct config *cfg, char *err)
{
	return config_load_string(yaml, strlen(yaml), "t.yaml", cfg, err, CONFIG_ERR_MAX);
}

/* Load a snippet that must be valid; fails the test with the loader's message if not. */
static void load_ok(const char *yaml, struct config *cfg)
{
	char err[CONFIG_ERR_MAX];

	if (load(yaml, cfg, err) != 0)
		fail_msg("unexpected error: %s\n--- yaml ---\n%s", err, yaml);
}

static void assert_defaults_except_path(const struct config *c)
{
	assert_string_equal(c->listen.host, "127.0.0.1");
	assert_int_equal(c->listen.port, 8080);
	assert_string_equal(c->admin_listen.host, "127.0.0.1");
	assert_int_equal(c->admin_listen.port, 8081);
	assert_null(c->admin_token.env);
	assert_null(c->admin_token.file);
	assert_null(c->admin_token.value);
	assert_int_equal(c->workers, 0);
	assert_string_equal(c->data_dir, "/var/lib/penstock");
	assert_string_equal(c->tokenizer_dir, "/usr/share/penstock/tokenizers");
	assert_string_equal(c->log_level, "info");
	assert_int_equal(c->timeouts.header_read, 10000);
	assert_int_equal(c->timeouts.body_read, 30000);
	assert_int_equal(c->timeouts.idle, 60000);
	assert_int_equal(c->timeouts.upstream_connect, 5000);
	assert_int_equal(c->timeouts.upstream_first_byte, 120000);
	assert_int_equal(c->timeouts.upstream_idle, 120000);
	assert_int_equal(c->timeouts.shutdown_grace, 30000);
	assert_int_equal(c->limits.max_header_bytes, 16384);
	assert_int_equal(c->limits.max_headers, 100);
	assert_int_equal(c->limits.max_body_bytes, 8u << 20);
	assert_int_equal(c->limits.max_connections, 16384);
	assert_int_equal(c->nproviders, 0);
	assert_null(c->providers);
	assert_int_equal(c->nmodels, 0);
	assert_int_equal(c->nteams, 0);
	assert_int_equal(c->nkeys, 0);
	assert_true(c->audit.enabled);
	assert_string_equal(c->audit.durability, "batch");
	assert_int_equal(c->audit.retention_days, 90);
	assert_int_equal(c->audit.test_retention_ms, 0);
	assert_int_equal(c->audit.body_max_bytes, 16384);
	assert_string_equal(c->access_log.destination, "stdout");
}

/* ---- whole configs that load ---- */

static void test_design_sketch_loads(void **state)
{
	char err[CONFIG_ERR_MAX];
	struct config c;
	const struct config_provider *p;
	const struct config_model *m;

	(void)state;
	if (config_load_file(FIXTURES "sketch.yaml", &c, err, sizeof err) != 0)
		fail_msg("%s", err);
	assert_string_equal(c.path, FIXTURES "sketch.yaml");
	assert_string_equal(c.listen.host, "127.0.0.1");
	assert_int_equal(c.listen.port, 8080);
	assert_int_equal(c.admin_listen.port, 8081);
	assert_string_equal(c.admin_token.env, "PENSTOCK_ADMIN_TOKEN");
	assert_null(c.admin_token.file);
	assert_int_equal(c.workers, 0);
	assert_string_equal(c.data_dir, "/var/lib/penstock");

	assert_int_equal(c.nproviders, 3);
	p = &c.providers[0];
	assert_string_equal(p->name, "openai");
	assert_int_equal(p->kind, PROVIDER_OPENAI);
	assert_string_equal(p->base_url, "https://api.openai.com");
	assert_true(p->tls);
	assert_string_equal(p->host, "api.openai.com");
	assert_int_equal(p->port, 443);
	assert_string_equal(p->path_prefix, "");
	assert_string_equal(p->api_key.env, "OPENAI_API_KEY");
	assert_int_equal(c.providers[1].kind, PROVIDER_ANTHROPIC);
	assert_string_equal(c.providers[1].api_key.env, "ANTHROPIC_API_KEY");
	p = &c.providers[2];
	assert_int_equal(p->kind, PROVIDER_OPENAI_COMPAT);
	assert_false(p->tls);
	assert_string_equal(p->host, "10.0.0.5");
	assert_int_equal(p->port, 8000);
	assert_null(p->api_key.env);
	assert_null(p->api_key.file);
	assert_null(p->api_key.value);

	assert_int_equal(c.nmodels, 2);
	m = &c.models[0];
	assert_string_equal(m->name, "gpt-4o");
	assert_true(m->input_per_mtok == 2.5);
	assert_true(m->output_per_mtok == 10.0);
	assert_string_equal(m->routing, "weighted");
	assert_int_equal(m->ntargets, 1);
	assert_string_equal(m->targets[0].provider, "openai");
	assert_string_equal(m->targets[0].model, "gpt-4o");
	assert_int_equal(m->targets[0].weight, 100);
	assert_int_equal(m->nfallback, 1);
	assert_string_equal(m->fallback[0], "claude-sonnet");
	assert_int_equal(m->context_window, 0);
	assert_int_equal(m->max_tokens, 0);
	m = &c.models[1];
	assert_string_equal(m->routing, "weighted"); /* the default */
	assert_int_equal(m->targets[0].weight, 1);   /* the default */
	assert_int_equal(m->nfallback, 0);

	assert_int_equal(c.nteams, 1);
	assert_string_equal(c.teams[0].name, "search");
	assert_int_equal(c.teams[0].nmodels, 1);
	assert_string_equal(c.teams[0].models[0], "gpt-4o");
	assert_int_equal(c.teams[0].rpm, 600);
	assert_int_equal(c.teams[0].tpm, 200000);
	assert_true(c.teams[0].budget_usd == 500.0);
	assert_string_equal(c.teams[0].budget_period, "monthly");

	assert_int_equal(c.nkeys, 1);
	assert_string_equal(c.keys[0].name, "ci");
	assert_string_equal(c.keys[0].team, "search");
	assert_string_equal(c.keys[0].key.env, "PENSTOCK_CI_KEY");
	assert_string_equal(c.audit.durability, "batch");
	assert_int_equal(c.audit.retention_days, 90);

	assert_ptr_equal(config_find_provider(&c, "anthropic"), &c.providers[1]);
	assert_ptr_equal(config_find_model(&c, "claude-sonnet"), &c.models[1]);
	assert_null(config_find_provider(&c, "gpt-4o"));
	assert_null(config_find_model(&c, "openai"));
	assert_null(config_find_model(&c, NULL));
	config_free(&c);
	assert_memory_equal(&c, &zero_config, sizeof c);
}

static void test_every_key_block_style(void **state)
{
	char err[CONFIG_ERR_MAX];
	struct config c;
	const struct config_provider *p;
	const struct config_model *m;
	const struct config_team *t;

	(void)state;
	if (config_load_file(FIXTURES "full-block.yaml", &c, err, sizeof err) != 0)
		fail_msg("%s", err);
	assert_string_equal(c.listen.host, "::1");
	assert_int_equal(c.listen.port, 9090);
	assert_string_equal(c.admin_listen.host, "localhost");
	assert_int_equal(c.admin_listen.port, 9091);
	assert_string_equal(c.admin_token.file, FIXTURES "secret.txt");
	assert_int_equal(c.workers, 4);
	assert_string_equal(c.data_dir, "/srv/penstock");
	assert_string_equal(c.log_level, "debug");
	assert_int_equal(c.timeouts.header_read, 250);
	assert_int_equal(c.timeouts.body_read, 120000);
	assert_int_equal(c.timeouts.idle, 3600000);
	assert_int_equal(c.timeouts.upstream_connect, 1500);
	assert_int_equal(c.timeouts.upstream_first_byte, 90000);
	assert_int_equal(c.timeouts.upstream_idle, 45000);
	assert_int_equal(c.timeouts.shutdown_grace, 0);
	assert_int_equal(c.limits.max_header_bytes, 32768);
	assert_int_equal(c.limits.max_headers, 64);
	assert_int_equal(c.limits.max_body_bytes, 1000000);
	assert_int_equal(c.limits.max_connections, 1000);
	assert_false(c.audit.enabled);
	assert_string_equal(c.audit.durability, "strict");
	assert_int_equal(c.audit.retention_days, 0);
	assert_int_equal(c.audit.test_retention_ms, 1500);
	assert_int_equal(c.audit.body_max_bytes, 65536);

	assert_int_equal(c.nproviders, 3);
	p = config_find_provider(&c, "openai");
	assert_non_null(p);
	assert_string_equal(p->path_prefix, "/v1");
	assert_string_equal(p->base_url, "https://api.openai.com/v1/");
	p = config_find_provider(&c, "vllm");
	assert_non_null(p);
	assert_false(p->tls);
	assert_string_equal(p->host, "fd00::5");
	assert_int_equal(p->port, 8000);
	assert_string_equal(p->path_prefix, "/proxy");
	assert_string_equal(p->api_key.value, "inline-not-secret");
	p = config_find_provider(&c, "claude");
	assert_non_null(p);
	assert_true(p->tls);
	assert_int_equal(p->port, 8443);
	assert_string_equal(p->api_key.file, "/etc/penstock/anthropic.key");

	m = config_find_model(&c, "gpt-4o-mini");
	assert_non_null(m);
	assert_true(m->input_per_mtok == 0.15);
	assert_true(m->output_per_mtok == 0.6);
	assert_string_equal(m->routing, "latency");
	assert_int_equal(m->ntargets, 2);
	assert_int_equal(m->targets[0].weight, 1);
	assert_string_equal(m->targets[1].provider, "vllm");
	assert_string_equal(m->targets[1].model, "llama-3");
	assert_int_equal(m->targets[1].weight, 0);
	assert_int_equal(m->nfallback, 1);
	assert_string_equal(m->fallback[0], "sonnet");
	assert_int_equal(m->context_window, 128000);
	assert_int_equal(m->max_tokens, 16384);
	m = config_find_model(&c, "sonnet");
	assert_non_null(m);
	assert_string_equal(m->routing, "cost");
	assert_true(m->input_per_mtok == 0.0);

	assert_int_equal(c.nteams, 2);
	t = &c.teams[0];
	assert_int_equal(t->nmodels, 1);
	assert_string_equal(t->models[0], "*");
	assert_int_equal(t->rpm, 0);
	assert_true(t->tpm == UINT64_MAX);
	assert_true(t->budget_usd == 1234.5);
	assert_string_equal(t->budget_period, "weekly");
	assert_true(t->audit_bodies);
	t = &c.teams[1];
	assert_int_equal(t->nmodels, 2);
	assert_false(t->audit_bodies);
	assert_true(t->budget_usd == 0.0);

	assert_int_equal(c.nkeys, 2);
	assert_string_equal(c.keys[0].team, "ops");
	assert_string_equal(c.keys[0].key.file, "/run/secrets/ops");
	assert_null(c.keys[1].team);
	assert_string_equal(c.keys[1].key.value, "sk-test-inline");
	config_free(&c);
	config_free(&c); /* freeing twice is harmless: the struct is zeroed */
}

static void test_defaults(void **state)
{
	static const char *const empty_docs[] = {
		"", "\n\n", "# comment only\n", "---\n", "--- ~\n", "{}\n", "---\n...\n",
		/* empty sections keep their defaults */
		"admin:\ntimeouts:\nlimits:\nproviders:\nmodels:\nteams:\nkeys:\naudit:\naccess_log:\n",
		"timeouts: {}\nlimits: {}\nproviders: []\nmodels: []\nteams: []\nkeys: []\n",
	};
	char err[CONFIG_ERR_MAX];
	struct config c;

	(void)state;
	for (size_t i = 0; i < sizeof empty_docs / sizeof empty_docs[0]; i++) {
		load_ok(empty_docs[i], &c);
		assert_string_equal(c.path, "t.yaml");
		assert_defaults_except_path(&c);
		config_free(&c);
	}
	if (config_load_file(FIXTURES "empty.yaml", &c, err, sizeof err) != 0)
		fail_msg("%s", err);
	assert_defaults_except_path(&c);
	config_free(&c);
	if (config_load_file(FIXTURES "comments-only.yaml", &c, err, sizeof err) != 0)
		fail_msg("%s", err);
	assert_defaults_except_path(&c);
	config_free(&c);

	/* no name: the embedded marker */
	assert_int_equal(config_load_string("", 0, NULL, &c, err, sizeof err), 0);
	assert_string_equal(c.path, "<embedded>");
	config_free(&c);
}

/* tokenizer_dir: where the vocabularies are; the package's folder unless set. */
static void test_tokenizer_dir(void **state)
{
	char err[CONFIG_ERR_MAX];
	struct config c;

	(void)state;
	load_ok("tokenizer_dir: /opt/penstock/vocab\n", &c);
	assert_string_equal(c.tokenizer_dir, "/opt/penstock/vocab");
	assert_string_equal(c.data_dir, "/var/lib/penstock");
	config_free(&c);
	load_ok("data_dir: /srv/p\n", &c);
	assert_string_equal(c.tokenizer_dir, "/usr/share/penstock/tokenizers");
	config_free(&c);
	assert_int_equal(load("tokenizer_dir: ''\n", &c, err), -1);
	assert_string_equal(err, "t.yaml:1:16: 'tokenizer_dir' must not be empty");
	assert_int_equal(load("tokenizer_dir: [a]\n", &c, err), -1);
	assert_string_equal(err, "t.yaml:1:16: 'tokenizer_dir' must be a string, got a list");
}

/* access_log.destination: stdout (journald) unless it names off or an absolute file. */
static void test_access_log_destination(void **state)
{
	static const char *const ok[][2] = {
		{ "access_log: { destination: stdout }\n", "stdout" },
		{ "access_log: { destination: \"off\" }\n", "off" },
		{ "access_log:\n  destination: /var/log/penstock/access.log\n",
		  "/var/log/penstock/access.log" },
		{ "access_log: {}\n", "stdout" },
	};
	struct config c;

	(void)state;
	for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
		load_ok(ok[i][0], &c);
		assert_string_equal(c.access_log.destination, ok[i][1]);
		config_free(&c);
		assert_null(c.access_log.destination);
	}
}

/* Setting one timeout leaves its siblings at their defaults. */
static void test_partial_sections_keep_defaults(void **state)
{
	struct config c;

	(void)state;
	load_ok("timeouts: { idle: 5s }\nlimits: { max_headers: 10 }\nadmin: { token: t }\n", &c);
	assert_int_equal(c.timeouts.idle, 5000);
	assert_int_equal(c.timeouts.header_read, 10000);
	assert_int_equal(c.timeouts.shutdown_grace, 30000);
	assert_int_equal(c.limits.max_headers, 10);
	assert_int_equal(c.limits.max_body_bytes, 8u << 20);
	assert_int_equal(c.admin_listen.port, 8081);
	assert_string_equal(c.admin_token.value, "t");
	config_free(&c);
}

/* ---- value forms ---- */

struct value_case {
	const char *yaml;
	uint64_t want;
	const char *what;
};

static uint64_t pick(const struct config *c, const char *what)
{
	if (strcmp(what, "idle") == 0)
		return c->timeouts.idle;
	if (strcmp(what, "grace") == 0)
		return c->timeouts.shutdown_grace;
	if (strcmp(what, "header_bytes") == 0)
		return c->limits.max_header_bytes;
	if (strcmp(what, "body_bytes") == 0)
		return c->limits.max_body_bytes;
	if (strcmp(what, "workers") == 0)
		return c->workers;
	if (strcmp(what, "port") == 0)
		return c->listen.port;
	fail_msg("no such pick: %s", what);
	return 0;
}

static void test_durations_sizes_numbers(void **state)
{
	static const struct value_case cases[] = {
		{ "timeouts: { idle: 250ms }", 250, "idle" },
		{ "timeouts: { idle: 10s }", 10000, "idle" },
		{ "timeouts: { idle: 2m }", 120000, "idle" },
		{ "timeouts: { idle: 3h }", 10800000, "idle" },
		{ "timeouts: { idle: 1500 }", 1500, "idle" },       /* bare = milliseconds */
		{ "timeouts: { idle: \"7s\" }", 7000, "idle" },     /* quoting a duration is fine */
		{ "timeouts: { idle: 4294967295 }", 4294967295u, "idle" }, /* uint32 max */
		{ "timeouts: { shutdown_grace: 0ms }", 0, "grace" },
		{ "limits: { max_header_bytes: 16KiB }", 16384, "header_bytes" },
		{ "limits: { max_header_bytes: 4 KB }", 4000, "header_bytes" },
		{ "limits: { max_header_bytes: 900B }", 900, "header_bytes" },
		{ "limits: { max_body_bytes: 8MiB }", 8388608, "body_bytes" },
		{ "limits: { max_body_bytes: 1MB }", 1000000, "body_bytes" },
		{ "limits: { max_body_bytes: 2GiB }", 2147483648u, "body_bytes" },
		{ "limits: { max_body_bytes: 3GB }", 3000000000u, "body_bytes" },
		{ "limits: { max_body_bytes: 12345 }", 12345, "body_bytes" },
		{ "workers: auto", 0, "workers" },
		{ "workers: 1", 1, "workers" },
		{ "workers: 1024", 1024, "workers" },
		{ "listen: 0.0.0.0:1", 1, "port" },
		{ "listen: 127.0.0.1:65535", 65535, "port" },
	};
	struct config c;

	(void)state;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		load_ok(cases[i].yaml, &c);
		if (pick(&c, cases[i].what) != cases[i].want)
			fail_msg("%s: got %llu, want %llu", cases[i].yaml,
				 (unsigned long long)pick(&c, cases[i].what),
				 (unsigned long long)cases[i].want);
		config_free(&c);
	}
}

static void test_listen_forms(void **state)
{
	static const struct {
		const char *yaml, *host;
		uint16_t port;
	} cases[] = {
		{ "listen: 10.1.2.3:80", "10.1.2.3", 80 },
		{ "listen: localhost:8080", "localhost", 8080 },
		{ "listen: \"[::]:443\"", "::", 443 },
		{ "listen: '[2001:db8::1]:8443'", "2001:db8::1", 8443 },
		{ "admin: { listen: '[::1]:1' }", NULL, 1 },
	};
	struct config c;

	(void)state;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		load_ok(cases[i].yaml, &c);
		if (cases[i].host) {
			assert_string_equal(c.listen.host, cases[i].host);
			assert_int_equal(c.listen.port, cases[i].port);
		} else {
			assert_string_equal(c.admin_listen.host, "::1");
			assert_int_equal(c.admin_listen.port, cases[i].port);
			assert_int_equal(c.listen.port, 8080);
		}
		config_free(&c);
	}
}

static void test_base_url_forms(void **state)
{
	static const struct {
		const char *url, *host, *prefix;
		bool tls;
		uint16_t port;
	} cases[] = {
		{ "https://api.openai.com", "api.openai.com", "", true, 443 },
		{ "http://10.0.0.5:8000", "10.0.0.5", "", false, 8000 },
		{ "http://vllm.internal", "vllm.internal", "", false, 80 },
		{ "https://gw.example.com:9443/openai/v1", "gw.example.com", "/openai/v1", true,
		  9443 },
		{ "http://h/", "h", "", false, 80 },
		{ "http://h//prefix//", "h", "//prefix", false, 80 },
		{ "http://[::1]:11434/", "::1", "", false, 11434 },
		{ "https://[fe80::1]", "fe80::1", "", true, 443 },
		{ "HTTP://Upper.Case_host:1/x", "Upper.Case_host", "/x", false, 1 },
	};
	char yaml[512];
	struct config c;

	(void)state;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		snprintf(yaml, sizeof yaml,
			 "providers: [ { name: p, kind: openai, base_url: '%s' } ]\n",
			 cases[i].url);
		load_ok(yaml, &c);
		assert_string_equal(c.providers[0].base_url, cases[i].url);
		assert_string_equal(c.providers[0].host, cases[i].host);
		assert_string_equal(c.providers[0].path_prefix, cases[i].prefix);
		assert_int_equal(c.providers[0].tls, cases[i].tls);
		assert_int_equal(c.providers[0].port, cases[i].port);
		config_free(&c);
	}
}

/* References resolve whatever the section order; keys may name teams only once there are. */
static void test_egress_settings(void **state)
{
	struct config c;

	(void)state;
	load_ok("egress_proxy: http://10.1.2.3:3128\n"
		"providers:\n"
		"  - { name: a, kind: anthropic, base_url: https://api.anthropic.com }\n"
		"  - { name: b, kind: openai, base_url: https://h, tls_verify: false, ca_file: /ca.pem,\n"
		"      proxy: 'http://[::1]:8888', api_version: '2024-01-01' }\n"
		"models: [ { name: m, tokenizer: cl100k_base, targets: [ { provider: a, model: x } ],\n"
		"            price: { input_per_mtok: 3, output_per_mtok: 15, cached_input_per_mtok: 0.3 } } ]\n",
		&c);
	assert_string_equal(c.egress_proxy.host, "10.1.2.3");
	assert_int_equal(c.egress_proxy.port, 3128);
	assert_true(c.providers[0].tls_verify);
	assert_null(c.providers[0].ca_file);
	assert_null(c.providers[0].proxy.url);
	assert_null(c.providers[0].api_version);
	assert_false(c.providers[1].tls_verify);
	assert_string_equal(c.providers[1].ca_file, "/ca.pem");
	assert_string_equal(c.providers[1].proxy.host, "::1");
	assert_int_equal(c.providers[1].proxy.port, 8888);
	assert_string_equal(c.providers[1].api_version, "2024-01-01");
	assert_string_equal(c.models[0].tokenizer, "cl100k_base");
	assert_true(c.models[0].cached_input_per_mtok > 0.29 && c.models[0].cached_input_per_mtok < 0.31);
	config_free(&c);
}

static void test_references(void **state)
{
	struct config c;

	(void)state;
	load_ok("models:\n"
		"  - { name: b, targets: [ { provider: p, model: x } ], fallback: [ a ] }\n"
		"  - { name: a, targets: [ { provider: p, model: y } ], fallback: [ b ] }\n"
		"teams: [ { name: t, models: [ '*', a ] } ]\n"
		"providers: [ { name: p, kind: anthropic, base_url: http://p } ]\n",
		&c);
	assert_int_equal(c.nmodels, 2);
	assert_string_equal(c.teams[0].models[1], "a");
	config_free(&c);

	load_ok("keys: [ { name: k, team: anything, key_env: K } ]\n", &c); /* no teams at all */
	assert_string_equal(c.keys[0].team, "anything");
	config_free(&c);

	load_ok("teams: [ { name: t } ]\nkeys: [ { name: k, key: x } ]\n", &c); /* no team */
	assert_null(c.keys[0].team);
	assert_null(c.teams[0].models);
	assert_string_equal(c.teams[0].budget_period, "monthly");
	config_free(&c);
}

/* Anchors and aliases are plain YAML: they work, and an alias makes an independent copy. */
static void test_aliases(void **state)
{
	struct config c;

	(void)state;
	load_ok("providers:\n"
		"  - &p { name: a, kind: openai, base_url: &u http://x:1 }\n"
		"  - { name: b, kind: openai, base_url: *u }\n"
		"models:\n"
		"  - { name: m, targets: &t [ { provider: a, model: x } ] }\n"
		"  - { name: n, targets: *t }\n",
		&c);
	assert_int_equal(c.providers[1].port, 1);
	assert_ptr_not_equal(c.models[0].targets, c.models[1].targets);
	assert_string_equal(c.models[1].targets[0].provider, "a");
	config_free(&c);
}

/* ---- errors: each one names t.yaml:line:col and says what is wrong ---- */

struct error_case {
	const char *yaml;
	const char *want; /* prefix of the message */
};

#define PROV "providers: [ { name: p, kind: openai, base_url: http://p } ]\n"
#define MODEL_M "models:\n  - name: m\n    targets: [ { provider: p, model: x } ]\n"

static const struct error_case error_cases[] = {
	/* egress settings */
	{ "providers: [ { name: p, kind: openai, base_url: http://p, tls_verify: maybe } ]\n",
	  "t.yaml:1:71: bad value 'maybe' for 'tls_verify' (expected one of: true, false)" },
	{ "egress_proxy: https://proxy:3128\n",
	  "t.yaml:1:15: 'egress_proxy' must start with http://" },
	{ "egress_proxy: http://proxy:3128/path\n",
	  "t.yaml:1:15: 'egress_proxy' must not have a path" },
	{ "providers: [ { name: p, kind: openai, base_url: http://p, proxy: 'http://u:p@x' } ]\n",
	  "t.yaml:1:66: 'proxy' must not contain credentials (proxy authentication" },
	{ PROV "models: [ { name: m, tokenizer: gpt2, targets: [ { provider: p, model: x } ] } ]\n",
	  "t.yaml:2:33: bad value 'gpt2' for 'tokenizer' (expected one of: o200k_base, cl100k_base, estimate)" },
	/* YAML syntax, reported by libyaml with its position */
	{ "listen: [a, b\n", "t.yaml:2:1: while parsing a flow sequence" },
	{ "a: b\n  c: d\n", "t.yaml:2:4: mapping values are not allowed" },
	{ "\tlisten: x\n", "t.yaml:1:1: while scanning for the next token: found character" },
	{ "listen: \"127.0.0.1:80\n", "t.yaml:2:1: while scanning a quoted scalar" },
	{ "listen: \xff\n", "t.yaml:1:9: invalid leading UTF-8 octet" },
	{ "data_dir: *nope\n", "t.yaml:1:11: found undefined alias" },
	{ "listen: 127.0.0.1:1\n---\nworkers: 2\n",
	  "t.yaml:2:1: only one YAML document is allowed" },
	{ "just a scalar\n", "t.yaml:1:1: the top level must be a mapping, got a scalar" },
	{ "- a\n- b\n", "t.yaml:1:1: the top level must be a mapping, got a list" },

	/* unknown keys, at every level */
	{ "lisen: 127.0.0.1:80\n",
	  "t.yaml:1:1: unknown key 'lisen' in top level (expected one of: listen, admin, workers, "
	  "busy_poll_us, data_dir, tokenizer_dir, log_level, timeouts, limits, retry, breaker, "
	  "latency, providers, models, teams, keys, audit, access_log, forward_headers, "
	  "egress_proxy)" },
	{ "workers: 2\n\n  # comment\nLogLevel: info\n",
	  "t.yaml:4:1: unknown key 'LogLevel' in top level" },
	{ "admin: { listen: 127.0.0.1:1, tokn: x }\n",
	  "t.yaml:1:31: unknown key 'tokn' in admin (expected one of: listen, token_env, "
	  "token_file, token)" },
	{ "timeouts:\n  header: 1s\n", "t.yaml:2:3: unknown key 'header' in timeouts" },
	{ "limits:\n  max_body: 1\n", "t.yaml:2:3: unknown key 'max_body' in limits" },
	{ "providers:\n  - name: a\n    kind: openai\n    base_url: http://x\n    apikey: k\n",
	  "t.yaml:5:5: unknown key 'apikey' in provider" },
	{ PROV MODEL_M "    fallbak: []\n", "t.yaml:5:5: unknown key 'fallbak' in model" },
	{ PROV MODEL_M "    price: { input: 1 }\n", "t.yaml:5:14: unknown key 'input' in price" },
	{ PROV "models:\n  - name: m\n    targets:\n      - provider: p\n        model: x\n"
	       "        wieght: 2\n",
	  "t.yaml:7:9: unknown key 'wieght' in target" },
	{ "teams:\n  - name: t\n    budgets: {}\n", "t.yaml:3:5: unknown key 'budgets' in team" },
	{ "teams:\n  - name: t\n    limits: { rph: 1 }\n",
	  "t.yaml:3:15: unknown key 'rph' in team limits (expected one of: rpm, tpm)" },
	{ "teams:\n  - name: t\n    budget: { usd: 1, every: day }\n",
	  "t.yaml:3:23: unknown key 'every' in budget" },
	{ "keys:\n  - { name: k, key: x, scope: all }\n",
	  "t.yaml:2:24: unknown key 'scope' in key" },
	{ "audit: { durable: true }\n", "t.yaml:1:10: unknown key 'durable' in audit" },
	{ "? [a]\n: 1\n", "t.yaml:1:3: keys in top level must be names, got a list" },

	/* duplicate keys */
	{ "workers: 1\nworkers: 2\n",
	  "t.yaml:2:1: duplicate key 'workers' in top level (first at line 1)" },
	{ "providers: [ { name: a, name: b } ]\n",
	  "t.yaml:1:25: duplicate key 'name' in provider (first at line 1)" },
	{ "timeouts:\n  idle: 1s\n  body_read: 2s\n  idle: 3s\n",
	  "t.yaml:4:3: duplicate key 'idle' in timeouts (first at line 2)" },
	{ "providers:\nmodels: []\nproviders: []\n",
	  "t.yaml:3:1: duplicate key 'providers' in top level (first at line 1)" },

	/* wrong types and missing values */
	{ "listen: [a]\n", "t.yaml:1:9: 'listen' must be host:port, got a list" },
	{ "admin: 5\n", "t.yaml:1:8: 'admin' must be a mapping, got a scalar" },
	{ "timeouts: [1s]\n", "t.yaml:1:11: 'timeouts' must be a mapping, got a list" },
	{ "providers: { name: a }\n", "t.yaml:1:12: 'providers' must be a list, got a mapping" },
	{ "providers: [ openai ]\n",
	  "t.yaml:1:14: each item of 'providers' must be a mapping (provider), got a scalar" },
	{ "providers:\n  -\n",
	  "t.yaml:2:4: each item of 'providers' must be a mapping (provider), got no value" },
	{ "data_dir:\n", "t.yaml:1:1: 'data_dir' needs a value (a string)" },
	{ "data_dir: ~\n", "t.yaml:1:1: 'data_dir' needs a value (a string)" },
	{ "data_dir: ''\n", "t.yaml:1:11: 'data_dir' must not be empty" },
	{ "data_dir: \"a\\0b\"\n", "t.yaml:1:11: 'data_dir' must not contain NUL bytes" },
	{ "data_dir: { a: 1 }\n", "t.yaml:1:11: 'data_dir' must be a string, got a mapping" },
	{ "log_level: loud\n",
	  "t.yaml:1:12: bad value 'loud' for 'log_level' (expected one of: debug, info, warn, "
	  "error)" },
	{ "log_level: INFO\n", "t.yaml:1:12: bad value 'INFO' for 'log_level'" },

	/* workers */
	{ "workers: 0\n", "t.yaml:1:10: 'workers' is out of range: 0 (allowed 1 to 1024)" },
	{ "workers: 1025\n", "t.yaml:1:10: 'workers' is out of range: 1025 (allowed 1 to 1024)" },
	{ "workers: many\n",
	  "t.yaml:1:10: bad value 'many' for 'workers' (expected 'auto' or a whole number)" },
	{ "workers: -1\n", "t.yaml:1:10: bad value '-1' for 'workers'" },
	{ "workers: \"4\"\n",
	  "t.yaml:1:10: 'workers' must be a whole number, got a quoted string" },
	{ "workers: 2.0\n", "t.yaml:1:10: bad value '2.0' for 'workers'" },

	/* addresses */
	{ "listen: 8080\n", "t.yaml:1:9: bad address '8080' for 'listen': missing :port" },
	{ "listen: 127.0.0.1:0\n",
	  "t.yaml:1:9: bad address '127.0.0.1:0' for 'listen': port must be 1 to 65535" },
	{ "listen: 127.0.0.1:65536\n",
	  "t.yaml:1:9: bad address '127.0.0.1:65536' for 'listen': port must be" },
	{ "listen: 127.0.0.1:http\n",
	  "t.yaml:1:9: bad address '127.0.0.1:http' for 'listen': port must be" },
	{ "listen: '127.0.0.1:'\n",
	  "t.yaml:1:9: bad address '127.0.0.1:' for 'listen': port must be" },
	{ "listen: 127.0.0.1:\n", "t.yaml:1:18: mapping values are not allowed" }, /* YAML's ':' */
	{ "listen: ::1:80\n",
	  "t.yaml:1:9: bad address '::1:80' for 'listen': an IPv6 address needs brackets" },
	{ "listen: '[::1:80'\n", "t.yaml:1:9: bad address '[::1:80' for 'listen': missing ']'" },
	{ "listen: '[::1]'\n", "t.yaml:1:9: bad address '[::1]' for 'listen': missing :port" },
	{ "listen: '[1.2.3.4]:80'\n",
	  "t.yaml:1:9: bad address '[1.2.3.4]:80' for 'listen': not an IPv6 address" },
	{ "listen: example.com:80\n",
	  "t.yaml:1:9: bad address 'example.com:80' for 'listen': host must be" },
	{ "listen: 256.1.1.1:80\n",
	  "t.yaml:1:9: bad address '256.1.1.1:80' for 'listen': host must be" },
	{ "listen: :80\n", "t.yaml:1:9: bad address ':80' for 'listen': missing host" },
	{ "admin:\n  listen: 1.2.3.4\n",
	  "t.yaml:2:11: bad address '1.2.3.4' for 'listen': missing :port" },

	/* durations */
	{ "timeouts:\n  idle: 10x\n",
	  "t.yaml:2:9: bad value '10x' for 'idle' (expected e.g. 250ms, 10s, 2m, 1h or a number of "
	  "milliseconds)" },
	{ "timeouts: { idle: 1.5s }\n", "t.yaml:1:19: bad value '1.5s' for 'idle'" },
	{ "timeouts: { idle: 10S }\n", "t.yaml:1:19: bad value '10S' for 'idle'" },
	{ "timeouts: { idle: s }\n", "t.yaml:1:19: bad value 's' for 'idle'" },
	{ "timeouts: { idle: -5s }\n", "t.yaml:1:19: bad value '-5s' for 'idle'" },
	{ "timeouts: { idle: 3d }\n", "t.yaml:1:19: bad value '3d' for 'idle'" },
	{ "timeouts:\n  idle: 0\n",
	  "t.yaml:2:9: 'idle' is out of range: 0 (allowed 1 to 4294967295 ms)" },
	{ "timeouts: { header_read: 0s }\n", "t.yaml:1:26: 'header_read' is out of range: 0s" },
	{ "timeouts: { idle: 1200h }\n", "t.yaml:1:19: 'idle' is out of range: 1200h" },
	{ "timeouts: { idle: 4294967296 }\n", "t.yaml:1:19: 'idle' is out of range: 4294967296" },
	{ "timeouts: { idle: 99999999999999999999999s }\n",
	  "t.yaml:1:19: 'idle' is out of range: 99999999999999999999999s" },
	{ "timeouts: { idle: [1] }\n", "t.yaml:1:19: 'idle' must be a duration, got a list" },

	/* sizes and limits */
	{ "limits:\n  max_body_bytes: 8MB2\n",
	  "t.yaml:2:19: bad value '8MB2' for 'max_body_bytes' (expected e.g. 16KiB, 8MiB, 1MB" },
	{ "limits: { max_body_bytes: 8mib }\n",
	  "t.yaml:1:27: bad value '8mib' for 'max_body_bytes'" },
	{ "limits: { max_body_bytes: KiB }\n",
	  "t.yaml:1:27: bad value 'KiB' for 'max_body_bytes'" },
	{ "limits: { max_body_bytes: 0 }\n", "t.yaml:1:27: 'max_body_bytes' is out of range: 0" },
	{ "limits: { max_header_bytes: 4GiB }\n",
	  "t.yaml:1:29: 'max_header_bytes' is out of range: 4GiB (allowed 1 to 4294967295 bytes)" },
	{ "limits: { max_body_bytes: 20000000000GiB }\n",
	  "t.yaml:1:27: 'max_body_bytes' is out of range: 20000000000GiB" },
	{ "limits: { max_headers: 70000 }\n",
	  "t.yaml:1:24: 'max_headers' is out of range: 70000 (allowed 1 to 65535)" },
	{ "limits: { max_headers: 1KiB }\n", "t.yaml:1:24: bad value '1KiB' for 'max_headers'" },
	{ "limits: { max_connections: 0 }\n", "t.yaml:1:28: 'max_connections' is out of range: 0" },

	/* providers */
	{ "providers:\n  - kind: openai\n    base_url: http://x\n",
	  "t.yaml:2:5: missing 'name' in provider" },
	{ "providers:\n  - name: a\n    base_url: http://x\n",
	  "t.yaml:2:5: missing 'kind' in provider" },
	{ "providers: [ { name: a, kind: openai } ]\n",
	  "t.yaml:1:14: missing 'base_url' in provider" },
	{ "providers:\n  - name: a\n    kind: azure\n    base_url: http://x\n",
	  "t.yaml:3:11: bad value 'azure' for 'kind' (expected one of: openai, anthropic, "
	  "openai-compatible)" },
	{ "providers:\n  - name: a\n    kind: openai\n    base_url: ftp://x\n",
	  "t.yaml:4:15: 'base_url' must start with http:// or https://" },
	{ "providers: [ { name: a, kind: openai, base_url: api.openai.com } ]\n",
	  "t.yaml:1:49: 'base_url' must start with http:// or https://" },
	{ "providers: [ { name: a, kind: openai, base_url: 'http://h:99999' } ]\n",
	  "t.yaml:1:49: 'base_url' has a bad port (1 to 65535)" },
	{ "providers: [ { name: a, kind: openai, base_url: 'http://h:/v1' } ]\n",
	  "t.yaml:1:49: 'base_url' has a bad port" },
	{ "providers: [ { name: a, kind: openai, base_url: 'http://h/v1?x=1' } ]\n",
	  "t.yaml:1:49: 'base_url' must not have a query or fragment" },
	{ "providers: [ { name: a, kind: openai, base_url: 'http:///v1' } ]\n",
	  "t.yaml:1:49: 'base_url' has no host" },
	{ "providers: [ { name: a, kind: openai, base_url: 'http://h$st' } ]\n",
	  "t.yaml:1:49: 'base_url' has a bad host name" },
	{ "providers: [ { name: a, kind: openai, base_url: 'http://a b' } ]\n",
	  "t.yaml:1:49: 'base_url' must not contain spaces" },
	{ "providers: [ { name: a, kind: openai, base_url: 'https://[::1' } ]\n",
	  "t.yaml:1:49: 'base_url' has an unclosed '['" },
	{ "providers: [ { name: a, kind: openai, base_url: 'https://[::g]' } ]\n",
	  "t.yaml:1:49: 'base_url' has a bad IPv6 address" },
	{ "providers: [ { name: a, kind: openai, base_url: 'https://[::1]x' } ]\n",
	  "t.yaml:1:49: 'base_url' has junk after ']'" },
	{ "providers:\n  - name: a\n    kind: openai\n    base_url: http://x\n    api_key_env: A\n"
	  "    api_key: inline\n",
	  "t.yaml:6:14: 'api_key' conflicts with another source of the same secret (give one of "
	  "api_key_env, api_key_file or api_key)" },
	{ "providers: [ { name: a, kind: openai, base_url: http://x, api_key_env: 1ABC } ]\n",
	  "t.yaml:1:72: 'api_key_env' must name an environment variable" },
	{ "providers: [ { name: a, kind: openai, base_url: http://x, api_key_file: '' } ]\n",
	  "t.yaml:1:73: 'api_key_file' must not be empty" },
	{ "providers:\n  - { name: a, kind: openai, base_url: http://x }\n"
	  "  - { name: a, kind: openai, base_url: http://y }\n",
	  "t.yaml:3:13: provider name 'a' is already used at line 2" },

	/* models */
	{ PROV "models:\n  - name: m\n", "t.yaml:3:5: missing 'targets' in model" },
	{ PROV "models:\n  - name: m\n    targets:\n", "t.yaml:3:5: missing 'targets' in model" },
	{ PROV "models:\n  - name: m\n    targets: []\n",
	  "t.yaml:4:14: 'targets' needs at least 1 item" },
	{ PROV "models:\n  - targets: [ { provider: p, model: x } ]\n",
	  "t.yaml:3:5: missing 'name' in model" },
	{ PROV "models:\n  - name: m\n    targets:\n      - provider: nope\n        model: x\n",
	  "t.yaml:5:19: unknown provider 'nope' (not defined under providers)" },
	{ "models:\n  - name: m\n    targets: [ { provider: p, model: x } ]\n",
	  "t.yaml:3:28: unknown provider 'p' (not defined under providers)" },
	{ PROV "models:\n  - name: m\n    targets:\n      - provider: p\n",
	  "t.yaml:5:9: missing 'model' in target" },
	{ PROV "models:\n  - name: m\n    targets: [ p ]\n",
	  "t.yaml:4:16: each item of 'targets' must be a mapping (target), got a scalar" },
	{ PROV MODEL_M "    fallback: [ ghost ]\n",
	  "t.yaml:5:17: unknown model 'ghost' (not defined under models)" },
	{ PROV MODEL_M "    fallback: [ m ]\n",
	  "t.yaml:5:17: model 'm' lists itself as a fallback" },
	{ PROV MODEL_M "    fallback: ghost\n",
	  "t.yaml:5:15: 'fallback' must be a list of names, got a scalar" },
	{ PROV MODEL_M "    fallback: [ { name: x } ]\n",
	  "t.yaml:5:17: each item of 'fallback' must be a name, got a mapping" },
	{ PROV MODEL_M "    fallback: [ '' ]\n",
	  "t.yaml:5:17: each item of 'fallback' must not be empty" },
	{ PROV MODEL_M "    routing: random\n",
	  "t.yaml:5:14: bad value 'random' for 'routing' (expected one of: weighted, latency, "
	  "cost, "
	  "priority)" },
	{ PROV MODEL_M "    price: { input_per_mtok: -1 }\n",
	  "t.yaml:5:30: bad value '-1' for 'input_per_mtok' (expected a number)" },
	{ PROV MODEL_M "    price: { input_per_mtok: \"2\" }\n",
	  "t.yaml:5:30: 'input_per_mtok' must be a number, got a quoted string" },
	{ PROV MODEL_M "    price: { output_per_mtok: .nan }\n",
	  "t.yaml:5:31: bad value '.nan' for 'output_per_mtok'" },
	{ PROV MODEL_M "    price: { output_per_mtok: 0x10 }\n",
	  "t.yaml:5:31: bad value '0x10' for 'output_per_mtok'" },
	{ PROV MODEL_M "    price: { output_per_mtok: 1.5.2 }\n",
	  "t.yaml:5:31: bad value '1.5.2' for 'output_per_mtok'" },
	{ PROV MODEL_M "    price: { output_per_mtok: 1e7 }\n",
	  "t.yaml:5:31: 'output_per_mtok' is out of range: 1e7 (allowed 0 to 1000000)" },
	{ PROV MODEL_M "    price: 2.5\n", "t.yaml:5:12: 'price' must be a mapping, got a scalar" },
	{ PROV MODEL_M "    context_window: lots\n",
	  "t.yaml:5:21: bad value 'lots' for 'context_window'" },
	{ PROV MODEL_M "    max_tokens: 5000000000\n",
	  "t.yaml:5:17: 'max_tokens' is out of range" },
	{ PROV "models:\n  - name: m\n"
	       "    targets: [ { provider: p, model: x, weight: 1000001 } ]\n",
	  "t.yaml:4:49: 'weight' is out of range: 1000001 (allowed 0 to 1000000)" },
	{ PROV MODEL_M "  - name: m\n    targets: [ { provider: p, model: y } ]\n",
	  "t.yaml:5:11: model name 'm' is already used at line 3" },

	/* teams */
	{ PROV MODEL_M "teams:\n  - name: t\n    models: [ m, gpt-5 ]\n",
	  "t.yaml:7:18: unknown model 'gpt-5' (not defined under models)" },
	{ "teams:\n  - models: []\n", "t.yaml:2:5: missing 'name' in team" },
	{ "teams:\n  - name: t\n    limits: { rpm: -1 }\n",
	  "t.yaml:3:20: bad value '-1' for 'rpm'" },
	{ "teams:\n  - name: t\n    limits: { tpm: 18446744073709551616 }\n",
	  "t.yaml:3:20: 'tpm' is out of range" },
	{ "teams:\n  - name: t\n    budget: { usd: 5, period: yearly }\n",
	  "t.yaml:3:31: bad value 'yearly' for 'period' (expected one of: daily, weekly, monthly, "
	  "total)" },
	{ "teams:\n  - name: t\n    budget: { period: daily }\n",
	  "t.yaml:3:13: missing 'usd' in budget" },
	{ "teams:\n  - name: t\n    budget: { usd: 1e13 }\n",
	  "t.yaml:3:20: 'usd' is out of range: 1e13" },
	{ "teams:\n  - name: t\n  - name: t\n",
	  "t.yaml:3:11: team name 't' is already used at line 2" },

	/* keys */
	{ "teams: [ { name: t } ]\nkeys:\n  - { name: k, team: u, key_env: K }\n",
	  "t.yaml:3:22: unknown team 'u' (not defined under teams)" },
	{ "keys:\n  - name: k\n", "t.yaml:2:5: key 'k' needs one of key_env, key_file or key" },
	{ "keys:\n  - name: k\n    key_file: /a\n    key_env: B\n",
	  "t.yaml:4:14: 'key_env' conflicts with another source of the same secret (give one of "
	  "key_env, key_file or key)" },
	{ "keys: [ { name: k, key: a }, { name: k, key: b } ]\n",
	  "t.yaml:1:38: key name 'k' is already used at line 1" },

	/* audit and admin */
	{ "audit: { durability: fast }\n",
	  "t.yaml:1:22: bad value 'fast' for 'durability' (expected one of: batch, strict)" },
	{ "audit: { retention_days: 40000 }\n",
	  "t.yaml:1:26: 'retention_days' is out of range: 40000 (allowed 0 to 36600)" },
	{ "audit: { enabled: maybe }\n", 
	  "t.yaml:1:19: bad value 'maybe' for 'enabled' (expected one of: true, false)" },
	{ "audit: { body_max_bytes: 1MiB }\n",
	  "t.yaml:1:26: 'body_max_bytes' is out of range: 1MiB (allowed 64 to 512000 bytes)" },
	{ "teams:\n  - { name: t, audit_bodies: maybe }\n",
	  "t.yaml:2:30: bad value 'maybe' for 'audit_bodies' (expected one of: true, false)" },
	{ "audit: { test_retention_ms: 86400001 }\n", 
	  "t.yaml:1:29: 'test_retention_ms' is out of range: 86400001 (allowed 0 to 86400000)" },
	{ "admin: { token_env: A, token_file: /b }\n",
	  "t.yaml:1:36: 'token_file' conflicts with another source of the same secret (give one of "
	  "token_env, token_file or token)" },
	{ "admin: { token: [a] }\n", "t.yaml:1:17: 'token' must be a string, got a list" },

	/* access log */
	{ "access_log: { destination: var/log/penstock.log }\n",
	  "t.yaml:1:28: bad value 'var/log/penstock.log' for 'destination' (expected stdout, off "
	  "or an absolute file path)" },
	{ "access_log: { destination: '' }\n",
	  "t.yaml:1:28: 'destination' must not be empty" },
	{ "access_log: { destination: stderr }\n",
	  "t.yaml:1:28: bad value 'stderr' for 'destination' (expected stdout, off or an absolute "
	  "file path)" },
	{ "access_log: { file: /var/log/p.log }\n",
	  "t.yaml:1:15: unknown key 'file' in access_log (expected one of: destination)" },
	{ "access_log: /var/log/p.log\n", "t.yaml:1:13: 'access_log' must be" },
};

static void test_errors_table(void **state)
{
	char err[CONFIG_ERR_MAX];
	struct config c;
	size_t failed = 0;

	(void)state;
	/* every mismatch is printed before failing, so one run shows them all */
	for (size_t i = 0; i < sizeof error_cases / sizeof error_cases[0]; i++) {
		const struct error_case *e = &error_cases[i];

		memset(&c, 0xa5, sizeof c); /* the loader must zero it, whatever was there */
		if (load(e->yaml, &c, err) != -1) {
			print_error("case %zu loaded but should fail with: %s\n--- yaml ---\n%s\n",
				    i, e->want, e->yaml);
			config_free(&c);
			failed++;
			continue;
		}
		if (strncmp(err, e->want, strlen(e->want)) != 0) {
			print_error("case %zu:\n got: %s\nwant: %s\n--- yaml ---\n%s\n", i, err,
				    e->want, e->yaml);
			failed++;
		}
		assert_memory_equal(&c, &zero_config, sizeof c);
	}
	assert_int_equal(failed, 0);
}

/* The breaker's error-rate keys: defaults, values, and bounds. */
static void test_breaker_error_rate(void **state)
{
	char err[CONFIG_ERR_MAX];
	struct config c;

	(void)state;
	load_ok("", &c);
	assert_int_equal(c.breaker.error_rate, 50);
	assert_int_equal(c.breaker.min_requests, 20);
	assert_int_equal(c.breaker.window, 10000);
	config_free(&c);
	load_ok("breaker: { error_rate: 0, min_requests: 5, window: 30s }\n", &c);
	assert_int_equal(c.breaker.error_rate, 0);
	assert_int_equal(c.breaker.min_requests, 5);
	assert_int_equal(c.breaker.window, 30000);
	assert_int_equal(c.breaker.failures, 5); /* the rest keep their defaults */
	config_free(&c);
	assert_int_equal(load("breaker: { error_rate: 101 }\n", &c, err), -1);
	assert_non_null(strstr(err, "error_rate"));
	assert_int_equal(load("breaker: { min_requests: 0 }\n", &c, err), -1);
	assert_non_null(strstr(err, "min_requests"));
	assert_int_equal(load("breaker: { window: 5ms }\n", &c, err), -1);
	assert_non_null(strstr(err, "window"));
}

/* A provider's health_check: absent, given, and its checks. */
static void test_provider_health_check(void **state)
{
	char err[CONFIG_ERR_MAX];
	struct config c;

	(void)state;
	load_ok("providers: [ { name: a, kind: openai, base_url: http://x } ]\n", &c);
	assert_null(c.providers[0].health_check.path);
	config_free(&c);
	load_ok("providers:\n"
		"  - { name: a, kind: openai, base_url: http://x, health_check: { path: /v1/models } }\n"
		"  - { name: b, kind: openai, base_url: http://y,\n"
		"      health_check: { path: /health, interval: 500ms, timeout: 200 } }\n", &c);
	assert_string_equal(c.providers[0].health_check.path, "/v1/models");
	assert_int_equal(c.providers[0].health_check.interval, 10000);
	assert_int_equal(c.providers[0].health_check.timeout, 2000);
	assert_string_equal(c.providers[1].health_check.path, "/health");
	assert_int_equal(c.providers[1].health_check.interval, 500);
	assert_int_equal(c.providers[1].health_check.timeout, 200);
	config_free(&c);
	static const struct { const char *hc, *want; } bad[] = {
		{ "{ interval: 1s }", "t.yaml:1:73: missing 'path' in health_check" },
		{ "{ path: v1/models }", "t.yaml:1:81: bad value 'v1/models' for 'path'" },
		{ "{ path: '/a b' }", "t.yaml:1:81: bad value '/a b' for 'path'" },
		{ "{ path: /h, interval: 1s, timeout: 2s }",
		  "t.yaml:1:108: 'timeout' (2000 ms) is longer than 'interval' (1000 ms)" },
		{ "{ path: /h, interval: 1s }",
		  "t.yaml:1:73: 'timeout' (2000 ms) is longer than 'interval' (1000 ms)" },
		{ "{ path: /h, port: 1 }", "t.yaml:1:85: unknown key 'port' in health_check" },
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		char yaml[256];
		snprintf(yaml, sizeof yaml,
			 "providers: [ { name: a, kind: openai, base_url: http://x, health_check: %s } ]\n",
			 bad[i].hc);
		assert_int_equal(load(yaml, &c, err), -1);
		if (strncmp(err, bad[i].want, strlen(bad[i].want)) != 0)
			fail_msg("case %zu: got %s", i, err);
	}
}

/* Secrets in the wrong place are reported without being echoed. */
static void test_errors_never_echo_secrets(void **state)
{
	static const char *const cases[] = {
		"providers: [ { name: a, kind: openai, base_url: http://x, "
		"api_key_env: sk-live-SECRET42 } ]\n",
		"providers: [ { name: a, kind: openai, base_url: 'https://u:SECRET42@x' } ]\n",
		"providers: [ { name: a, kind: openai, base_url: 'https://x/?key=SECRET42' } ]\n",
		"providers: [ { name: a, kind: openai, base_url: http://x, api_key: SECRET42, "
		"api_key_file: /k } ]\n",
		"keys: [ { name: k, key: SECRET42, key_env: 'SECRET42' } ]\n",
		"admin: { token_env: 'SECRET42 with spaces' }\n",
	};
	char err[CONFIG_ERR_MAX];
	struct config c;

	(void)state;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		assert_int_equal(load(cases[i], &c, err), -1);
		assert_true(strncmp(err, "t.yaml:1:", 9) == 0);
		if (strstr(err, "SECRET42"))
			fail_msg("case %zu echoes the secret: %s", i, err);
	}
}

static void test_error_from_file_names_file(void **state)
{
	char err[CONFIG_ERR_MAX];
	struct config c;

	(void)state;
	assert_int_equal(config_load_file(FIXTURES "bad-nested.yaml", &c, err, sizeof err), -1);
	assert_string_equal(err, FIXTURES "bad-nested.yaml:11:9: unknown key 'wieght' in target "
				 "(expected one of: provider, model, weight, price, context_window)");
	assert_memory_equal(&c, &zero_config, sizeof c);

	assert_int_equal(config_load_file(FIXTURES "missing.yaml", &c, err, sizeof err), -1);
	assert_string_equal(err, FIXTURES "missing.yaml: cannot read config: "
				 "No such file or directory");
	assert_int_equal(config_load_file(FIXTURES, &c, err, sizeof err), -1);
	assert_string_equal(err, FIXTURES ": cannot read config: Is a directory");
	assert_memory_equal(&c, &zero_config, sizeof c);
}

/* A message longer than the caller's buffer is cut, still terminated; no buffer is fine. */
static void test_error_buffer_bounds(void **state)
{
	char small[16];
	struct config c;

	(void)state;
	memset(small, 'x', sizeof small);
	assert_int_equal(config_load_string("lisen: 1", 8, "t.yaml", &c, small, sizeof small), -1);
	assert_string_equal(small, "t.yaml:1:1: unk");
	assert_int_equal(config_load_string("lisen: 1", 8, "t.yaml", &c, NULL, 0), -1);
	assert_memory_equal(&c, &zero_config, sizeof c);
	/* the length is honoured: only "workers: 1" is read, not the bad key after it */
	assert_int_equal(config_load_string("workers: 1\nlisen: 1", 10, "t.yaml", &c, small,
					    sizeof small), 0);
	assert_int_equal(c.workers, 1);
	config_free(&c);
}

/* Control bytes in a quoted key never reach the message raw; long keys are cut. */
static void test_error_shows_values_safely(void **state)
{
	char err[CONFIG_ERR_MAX];
	char yaml[300];
	struct config c;

	(void)state;
	assert_int_equal(load("\"a\\x1b[31mb\": 1\n", &c, err), -1);
	assert_string_equal(err, "t.yaml:1:1: unknown key 'a?[31mb' in top level (expected one of: "
				 "listen, admin, workers, busy_poll_us, data_dir, tokenizer_dir, log_level, "
				 "timeouts, limits, retry, breaker, latency, providers, models, teams, keys, "
				 "audit, access_log, forward_headers, egress_proxy)");
	snprintf(yaml, sizeof yaml, "%0200d: 1\n", 7);
	assert_int_equal(load(yaml, &c, err), -1);
	assert_non_null(strstr(err, "unknown key '0000"));
	assert_non_null(strstr(err, "...' in top level"));
	char whole[201];
	memset(whole, '0', 199);
	whole[199] = '7';
	whole[200] = 0;
	assert_null(strstr(err, whole)); /* the key was cut, not echoed whole */
}

/* ---- secrets ---- */

static void test_secret_from_env(void **state)
{
	struct config_secret s = { .env = "PENSTOCK_TEST_SECRET" };
	char err[CONFIG_ERR_MAX];
	char *v;

	(void)state;
	setenv("PENSTOCK_TEST_SECRET", "env-value-1", 1);
	v = config_resolve_secret(&s, err, sizeof err);
	assert_non_null(v);
	assert_string_equal(v, "env-value-1");
	assert_string_equal(err, "");
	free(v);

	setenv("PENSTOCK_TEST_SECRET", "", 1);
	assert_null(config_resolve_secret(&s, err, sizeof err));
	assert_string_equal(err, "environment variable PENSTOCK_TEST_SECRET is empty");

	unsetenv("PENSTOCK_TEST_SECRET");
	assert_null(config_resolve_secret(&s, err, sizeof err));
	assert_string_equal(err, "environment variable PENSTOCK_TEST_SECRET is not set");
}

static void test_secret_from_file(void **state)
{
	struct config_secret s = { .file = FIXTURES "secret.txt" };
	char err[CONFIG_ERR_MAX];
	char *v;

	(void)state;
	v = config_resolve_secret(&s, err, sizeof err);
	assert_non_null(v);
	assert_string_equal(v, "file-secret-42"); /* trailing newlines trimmed */
	free(v);

	s.file = FIXTURES "secret-blank.txt";
	assert_null(config_resolve_secret(&s, err, sizeof err));
	assert_string_equal(err, "secret file " FIXTURES "secret-blank.txt is empty");

	s.file = FIXTURES "no-such-secret";
	assert_null(config_resolve_secret(&s, err, sizeof err));
	assert_string_equal(err, "cannot read secret file " FIXTURES
				 "no-such-secret: No such file or directory");
}

/* The 64 KiB bound: exactly 64 KiB is read, one byte more is refused. */
static void test_secret_file_size_bound(void **state)
{
	char path[] = "/tmp/penstock-test-secret-XXXXXX";
	struct config_secret s = { .file = path };
	char err[CONFIG_ERR_MAX];
	static char big[(64 << 10) + 1];
	char *v;
	int fd;

	(void)state;
	memset(big, 'k', sizeof big);
	fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, big, 64 << 10), 64 << 10);
	v = config_resolve_secret(&s, err, sizeof err);
	assert_non_null(v);
	assert_int_equal(strlen(v), 64 << 10);
	free(v);

	assert_int_equal(write(fd, "k", 1), 1);
	assert_null(config_resolve_secret(&s, err, sizeof err));
	assert_non_null(strstr(err, "is larger than 64 KiB"));

	assert_int_equal(ftruncate(fd, 3), 0);
	assert_int_equal(pwrite(fd, "a\0b", 3, 0), 3);
	assert_null(config_resolve_secret(&s, err, sizeof err));
	assert_non_null(strstr(err, "contains a NUL byte"));
	close(fd);
	unlink(path);
}

static void test_secret_inline_and_none(void **state)
{
	struct config_secret inline_s = { .value = "inline-v" }, none = { 0 };
	char err[CONFIG_ERR_MAX];
	char *v;

	(void)state;
	v = config_resolve_secret(&inline_s, err, sizeof err);
	assert_non_null(v);
	assert_string_equal(v, "inline-v");
	assert_ptr_not_equal(v, inline_s.value);
	free(v);
	strcpy(err, "stale");
	assert_null(config_resolve_secret(&none, err, sizeof err));
	assert_string_equal(err, "");
}

/* Secrets named by a loaded config resolve: the admin token file of full-block.yaml. */
static void test_secret_from_loaded_config(void **state)
{
	char err[CONFIG_ERR_MAX];
	struct config c;
	char *v;

	(void)state;
	if (config_load_file(FIXTURES "full-block.yaml", &c, err, sizeof err) != 0)
		fail_msg("%s", err);
	v = config_resolve_secret(&c.admin_token, err, sizeof err);
	assert_non_null(v);
	assert_string_equal(v, "file-secret-42");
	free(v);
	v = config_resolve_secret(&config_find_provider(&c, "vllm")->api_key, err, sizeof err);
	assert_non_null(v);
	assert_string_equal(v, "inline-not-secret");
	free(v);
	config_free(&c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_design_sketch_loads),
		cmocka_unit_test(test_every_key_block_style),
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_tokenizer_dir),
		cmocka_unit_test(test_access_log_destination),
		cmocka_unit_test(test_partial_sections_keep_defaults),
		cmocka_unit_test(test_durations_sizes_numbers),
		cmocka_unit_test(test_listen_forms),
		cmocka_unit_test(test_base_url_forms),
		cmocka_unit_test(test_egress_settings),
		cmocka_unit_test(test_references),
		cmocka_unit_test(test_aliases),
		cmocka_unit_test(test_errors_table),
		cmocka_unit_test(test_breaker_error_rate),
		cmocka_unit_test(test_provider_health_check),
		cmocka_unit_test(test_errors_never_echo_secrets),
		cmocka_unit_test(test_error_from_file_names_file),
		cmocka_unit_test(test_error_buffer_bounds),
		cmocka_unit_test(test_error_shows_values_safely),
		cmocka_unit_test(test_secret_from_env),
		cmocka_unit_test(test_secret_from_file),
		cmocka_unit_test(test_secret_file_size_bound),
		cmocka_unit_test(test_secret_inline_and_none),
		cmocka_unit_test(test_secret_from_loaded_config),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
