/* main.c - the penstock daemon: load the config, start the workers, wait for signals. */
#include <getopt.h>
#include <sched.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "core/engine.h"
#include "core/log.h"
#include "admin.h"
#include "accesslog.h"
#include "gov.h"
#include "metrics.h"
#include "pipeline.h"

#define DEFAULT_CONFIG "/etc/penstock/penstock.yaml"

/* The demo: the bundled mock provider on 127.0.0.1:9090 (tools/run starts it), reached
 * both as an OpenAI-compatible and as an Anthropic provider, and a client key from
 * PENSTOCK_DEMO_KEY. */
static const char demo_config[] =
	"listen: 127.0.0.1:8080\n"
	"workers: auto\n"
	"data_dir: /tmp/penstock-demo\n"
	"providers:\n"
	"  - { name: mock, kind: openai-compatible, base_url: http://127.0.0.1:9090 }\n"
	"  - { name: mock-anthropic, kind: anthropic, base_url: http://127.0.0.1:9090 }\n"
	"models:\n"
	"  - { name: gpt-4o-mini, price: { input_per_mtok: 0.15, output_per_mtok: 0.60 },\n"
	"      targets: [ { provider: mock, model: gpt-4o-mini } ] }\n"
	"  - { name: gpt-4o, price: { input_per_mtok: 2.50, output_per_mtok: 10.00 },\n"
	"      targets: [ { provider: mock, model: gpt-4o } ] }\n"
	"  - { name: claude-haiku, price: { input_per_mtok: 0.80, output_per_mtok: 4.00 },\n"
	"      max_tokens: 1024, targets: [ { provider: mock-anthropic, model: claude-3-5-haiku } ] }\n"
	"keys:\n"
	"  - { name: demo, key_env: PENSTOCK_DEMO_KEY }\n";

/* One worker per CPU this process may run on (workers: auto), as the engine counts. */
static unsigned allowed_cpus(void)
{
	cpu_set_t set;
	if (sched_getaffinity(0, sizeof(set), &set) != 0 || CPU_COUNT(&set) < 1)
		return 1;
	return (unsigned)CPU_COUNT(&set);
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: penstock [--config FILE]      run the gateway (default " DEFAULT_CONFIG ")\n"
		"       penstock --demo               run the built-in demo config (mock provider)\n"
		"       penstock --check-config FILE  validate a config file and exit\n"
		"       penstock --version\n");
}

/* The config file, or the built-in demo; -1 with the reason in err. */
static int load(const char *path, bool demo, struct config *cfg, char *err, size_t errlen)
{
	return demo ? config_load_string(demo_config, sizeof(demo_config) - 1, "<demo>", cfg, err,
					 errlen)
		    : config_load_file(path, cfg, err, errlen);
}

/* What a reload needs: where the config comes from, what takes it. */
struct reloader {
	const char *path;
	bool demo;
	struct pipeline *pl;
	struct engine *e;
};

/* SIGHUP and POST /admin/reload: read the config again and apply it, or say why not. */
static int reload(void *ctx, struct admin_reload_result *r)
{
	struct reloader *rl = ctx;
	struct config *next = malloc(sizeof(*next));
	if (!next) {
		snprintf(r->error, sizeof(r->error), "out of memory");
		return -1;
	}
	int rc = load(rl->path, rl->demo, next, r->error, sizeof(r->error));
	struct pipeline_reload_info info;
	if (rc)
		free(next);
	if (pipeline_reload(rl->pl, rc ? NULL : next, &info, r->error, sizeof(r->error)) == 0) {
		engine_wake(rl->e); /* idle workers let go of the old snapshot too */
		r->generation = info.generation;
		r->providers = info.providers;
		r->models = info.models;
		log_info("configuration reloaded: generation %llu, %zu providers, %zu models",
			 (unsigned long long)info.generation, info.providers, info.models);
		return 0;
	}
	log_error("configuration reload refused, the running one stays: %s", r->error);
	return -1;
}

static void config_stats(void *ctx, struct metrics_config_stats *out)
{
	pipeline_config_stats(((struct reloader *)ctx)->pl, out);
}

static void with_config(void *ctx, void (*fn)(const struct config *cfg, void *arg), void *arg)
{
	pipeline_with_config(((struct reloader *)ctx)->pl, fn, arg);
}

static int render_targets(void *ctx, struct buf *out)
{
	return pipeline_render_targets(((struct reloader *)ctx)->pl, out);
}

static bool has_model(void *ctx, const char *name) { return pipeline_has_model(ctx, name); }

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "check-config", required_argument, NULL, 'C' },
		{ "demo", no_argument, NULL, 'd' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	const char *path = DEFAULT_CONFIG;
	bool demo = false, check = false;
	int c;
	while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
		switch (c) {
		case 'c': path = optarg; break;
		case 'C': path = optarg; check = true; break;
		case 'd': demo = true; break;
		case 'V': puts("penstock " PENSTOCK_VERSION); return 0;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind < argc) {
		usage(stderr);
		return 2;
	}

	struct config cfg;
	char lerr[CONFIG_ERR_MAX];
	if (load(path, demo, &cfg, lerr, sizeof(lerr))) {
		fprintf(stderr, "penstock: %s\n", lerr);
		return 1;
	}
	char err[512] = "";
	if (check) {
		struct pipeline *pl = pipeline_new(&cfg, NULL, err, sizeof(err));
		if (!pl) {
			fprintf(stderr, "penstock: %s: %s\n", path, err);
			config_free(&cfg);
			return 1;
		}
		printf("%s: ok (%zu providers, %zu models, %zu keys)\n", path, cfg.nproviders,
		       cfg.nmodels, cfg.nkeys);
		pipeline_free(pl);
		config_free(&cfg);
		return 0;
	}
	int level = log_level_parse(cfg.log_level ? cfg.log_level : "info");
	if (level >= 0)
		log_min_level = (enum log_level)level;
	log_info("penstock %s starting (config %s)", PENSTOCK_VERSION, demo ? "<demo>" : path);
	unsigned workers = cfg.workers ? cfg.workers : allowed_cpus();
	struct gov *gov = gov_open(&cfg, workers, err, sizeof(err));
	struct pipeline *pl = gov ? pipeline_new(&cfg, gov, err, sizeof(err)) : NULL;
	struct metrics *metrics = pl ? metrics_new(&cfg, workers) : NULL;
	struct accesslog *alog = metrics ? accesslog_open(&cfg, workers, err, sizeof(err)) : NULL;
	if (!alog) {
		fprintf(stderr, "penstock: %s\n", err[0] ? err : "out of memory");
		metrics_free(metrics);
		pipeline_free(pl);
		gov_close(gov);
		config_free(&cfg);
		return 1;
	}
	pipeline_observe(pl, metrics, alog);
	http1_init();

	/* Workers inherit this mask: signals are taken here, by sigwait, only. */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);

	const struct config_timeouts *t = &cfg.timeouts;
	struct engine_options opt = {
		.host = cfg.listen.host,
		.port = cfg.listen.port,
		.workers = workers,
		.busy_poll_us = cfg.busy_poll_us,
		.pin = true,
		.limits = { .max_header_bytes = cfg.limits.max_header_bytes,
			    .max_headers = cfg.limits.max_headers,
			    .max_body_bytes = cfg.limits.max_body_bytes },
		.max_connections = cfg.limits.max_connections,
		.timeouts = { .header_read = t->header_read, .body_read = t->body_read, .idle = t->idle,
			      .upstream_connect = t->upstream_connect,
			      .upstream_first_byte = t->upstream_first_byte,
			      .upstream_idle = t->upstream_idle, .pool_idle = t->idle,
			      .shutdown_grace = t->shutdown_grace },
		.handler = pipeline_handler(pl),
		.name = "penstock",
	};
	struct engine *e = engine_start(&opt);
	if (!e) {
		accesslog_close(alog);
		metrics_free(metrics);
		pipeline_free(pl);
		gov_close(gov);
		return 1;
	}
	struct reloader rl = { .path = path, .demo = demo, .pl = pl, .e = e };
	gov_set_catalog(gov, has_model, pl);
	struct admin *adm = admin_start(&cfg, gov, err, sizeof(err));
	if (adm) {
		admin_set_metrics(adm, metrics, e);
		admin_set_control(adm, &(struct admin_control){ .reload = reload,
								.config_stats = config_stats,
								.with_config = with_config,
								.render_targets = render_targets,
								.ctx = &rl });
	}
	if (!adm) {
		log_error("%s", err);
		engine_stop(e);
		engine_join(e);
		accesslog_close(alog);
		metrics_free(metrics);
		pipeline_free(pl);
		gov_close(gov);
		return 1;
	}
	for (;;) {
		int sig;
		sigwait(&set, &sig);
		if (sig == SIGHUP) {
			/* the configuration is read again; logrotate's signal too: the access log
			 * file is reopened */
			struct admin_reload_result r;
			reload(&rl, &r);
			int rc = accesslog_reopen(alog);
			if (rc)
				log_error("SIGHUP: reopening the access log: %s", strerror(-rc));
			else
				log_info("SIGHUP: access log reopened");
			continue;
		}
		log_info("%s: finishing requests in flight (up to %u ms), then exiting",
			 sig == SIGTERM ? "SIGTERM" : "SIGINT", t->shutdown_grace);
		break;
	}
	admin_stop(adm);
	engine_stop(e);
	engine_join(e);
	accesslog_close(alog);
	metrics_free(metrics);
	pipeline_free(pl);
	gov_close(gov); /* after the workers: the store commits what they handed it */
	config_free(&cfg);
	log_info("stopped");
	return 0;
}
