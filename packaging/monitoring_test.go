package packaging

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"rbd/internal/initiator"
	"rbd/internal/stats"
	"rbd/internal/target"
)

// The monitoring files: the alert rules, their promtool unit tests and the
// Grafana dashboard.
const (
	alertRules     = "prometheus/rbd-alerts.yml"
	alertTests     = "prometheus/rbd-alerts.test.yml"
	scrapeExample  = "prometheus/prometheus-scrape.yml"
	dashboardJSON  = "grafana/rbd-dashboard.json"
	metricsDocPath = "docs/metrics.md"
)

// emitted describes what the daemons' /metrics can carry: each metric name
// (histograms with their _bucket, _sum and _count series) with its label
// names, and the values of the enumerated labels.
type emitted struct {
	labels map[string]map[string]bool // metric -> label names
	values map[string]map[string]bool // enumerated label -> values
}

// Labels that Prometheus adds to every series it scrapes, and the series it
// makes itself for every scrape target.
var (
	targetLabels    = []string{"instance", "job"}
	scrapeSynthetic = []string{"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_series_added", "scrape_samples_post_metric_relabeling"}
	// The labels whose values the rules and panels may name, which must be
	// values the daemons emit.
	enumerated = []string{"role", "state", "op", "kind", "reason"}
)

// daemonMetrics builds the collectors as rbdi and rbdt do (their info labels,
// states, a device, an export and a session), registers them as
// internal/daemon.Services does, and gathers: what it returns is what the
// daemons really emit, not a list kept by hand.
func daemonMetrics(t *testing.T) emitted {
	t.Helper()
	ini := stats.NewCollector(stats.RoleInitiator, stats.InitiatorInfoLabels...)
	tgt := stats.NewCollector(stats.RoleTarget, stats.TargetInfoLabels...)
	for _, c := range []*stats.Collector{ini, tgt} {
		c.SetBuildInfo("v0-test", "go1.26")
	}
	busy := func() *stats.Counters {
		c := stats.NewCounters()
		for op := range stats.NumOps {
			c.Done(op, 4096, c.Start(op), stats.ErrNone)
		}
		return c
	}
	dl := stats.Labels{Device: "rbdi0", Target: "10.0.0.1:65000", Export: "/dev/ram0"}
	el := stats.Labels{Export: "/dev/ram0"}
	sl := stats.Labels{Export: "/dev/ram0", Session: "1"}
	info := func(names []string) map[string]string {
		m := map[string]string{}
		for _, n := range names {
			m[n] = "x"
		}
		return m
	}
	for _, err := range []error{
		ini.Add("rbdi0", dl, busy()),
		ini.AddInfo("rbdi0", dl, 1<<30, info(stats.InitiatorInfoLabels)),
		ini.AddState("rbdi0", dl, initiator.DeviceStates, func() string { return initiator.StateConnected }),
		tgt.Add("export", el, busy()),
		tgt.Add("session", sl, busy()),
		tgt.AddInfoFunc("export", el, func() (uint64, map[string]string, bool) { return 1 << 30, info(stats.TargetInfoLabels), true }),
		tgt.AddState("export", el, stats.ExportStates, func() string { return "ready" }),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	e := emitted{labels: map[string]map[string]bool{}, values: map[string]map[string]bool{}}
	for _, n := range enumerated {
		e.values[n] = map[string]bool{}
	}
	add := func(name string, lps []*dto.LabelPair, extra ...string) {
		if e.labels[name] == nil {
			e.labels[name] = map[string]bool{}
		}
		for _, n := range append(slices.Clone(targetLabels), extra...) {
			e.labels[name][n] = true
		}
		for _, lp := range lps {
			e.labels[name][lp.GetName()] = true
			if vs := e.values[lp.GetName()]; vs != nil {
				vs[lp.GetValue()] = true
			}
		}
	}
	// rbdt's limits collector, with one initiator address holding a connection
	limits := prometheus.NewRegistry()
	limits.MustRegister(target.LimitsCollector(func() target.Usage {
		return target.Usage{Peers: []target.PeerUsage{{Addr: netip.MustParseAddr("10.0.0.2"), Conns: 1}}, Refused: map[string]uint64{}}
	}))
	for _, c := range []*stats.Collector{ini, tgt, nil} {
		reg := limits
		if c != nil {
			reg = stats.NewRegistry(c)
			stats.Handler(reg) // registers promhttp_metric_handler_*, as the daemons' handler does
		}
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				name := mf.GetName()
				switch mf.GetType() {
				case dto.MetricType_HISTOGRAM:
					add(name+"_bucket", m.GetLabel(), "le")
					add(name+"_sum", m.GetLabel())
					add(name+"_count", m.GetLabel())
				case dto.MetricType_SUMMARY:
					add(name, m.GetLabel(), "quantile")
					add(name+"_sum", m.GetLabel())
					add(name+"_count", m.GetLabel())
				default:
					add(name, m.GetLabel())
				}
			}
		}
	}
	for _, n := range scrapeSynthetic {
		add(n, nil)
	}
	return e
}

// ---- a small PromQL reader: enough to find every metric name, label
// matcher and grouping label of an expression.

// promqlWords are the PromQL keywords and aggregation modifiers that look
// like identifiers but name no metric.
var promqlWords = map[string]bool{
	"and": true, "or": true, "unless": true, "bool": true, "offset": true,
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	"inf": true, "nan": true,
	// aggregations, which may have their by or without before the parenthesis
	"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true, "stdvar": true,
	"count": true, "count_values": true, "bottomk": true, "topk": true, "quantile": true,
}

// selector is one metric name in an expression with its label matchers.
type selector struct {
	metric   string
	matchers []matcher
}

type matcher struct {
	label, op, value string
}

// parsedExpr is what an expression names: its selectors and the labels it
// groups by (by, without, on, ignoring, group_left, group_right).
type parsedExpr struct {
	selectors []selector
	grouping  []string
}

var identRE = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*`)

// parsePromQL reads expr. It does not check the syntax (promtool and
// Prometheus do); it fails only on what it cannot follow.
func parsePromQL(expr string) (parsedExpr, error) {
	var p parsedExpr
	s := expr
	skipSpace := func() {
		s = strings.TrimLeft(s, " \t\r\n")
	}
	for {
		skipSpace()
		if s == "" {
			return p, nil
		}
		switch c := s[0]; {
		case c == '"' || c == '\'' || c == '`':
			_, rest, err := readString(s)
			if err != nil {
				return p, fmt.Errorf("%s: %w", expr, err)
			}
			s = rest
		case c == '[':
			i := strings.IndexByte(s, ']')
			if i < 0 {
				return p, fmt.Errorf("%s: unclosed [", expr)
			}
			s = s[i+1:]
		case c == '{':
			// matchers with no metric name before them
			ms, rest, err := readMatchers(s)
			if err != nil {
				return p, fmt.Errorf("%s: %w", expr, err)
			}
			p.selectors = append(p.selectors, selector{matchers: ms})
			s = rest
		case c >= '0' && c <= '9' || c == '.':
			i := 1
			for i < len(s) && (s[i] >= '0' && s[i] <= '9' || s[i] == '.' || s[i] == 'e' || s[i] == 'x' ||
				s[i] >= 'a' && s[i] <= 'f' || strings.IndexByte("smhdwy", s[i]) >= 0) {
				i++
			}
			s = s[i:]
		case c == '$':
			// a Grafana variable outside a string ($__interval): skip it
			m := regexp.MustCompile(`^\$\{?[a-zA-Z0-9_]+\}?`).FindString(s)
			if m == "" {
				return p, fmt.Errorf("%s: stray $", expr)
			}
			s = s[len(m):]
		default:
			id := identRE.FindString(s)
			if id == "" {
				s = s[1:] // an operator or parenthesis
				continue
			}
			s = s[len(id):]
			skipSpace()
			low := strings.ToLower(id)
			switch {
			case low == "by" || low == "without" || low == "on" || low == "ignoring" || low == "group_left" || low == "group_right":
				if strings.HasPrefix(s, "(") {
					i := strings.IndexByte(s, ')')
					if i < 0 {
						return p, fmt.Errorf("%s: unclosed %s(", expr, id)
					}
					for _, l := range strings.Split(s[1:i], ",") {
						if l = strings.TrimSpace(l); l != "" {
							p.grouping = append(p.grouping, l)
						}
					}
					s = s[i+1:]
				}
			case promqlWords[low]:
			case strings.HasPrefix(s, "("):
				// a function or an aggregation; its arguments follow
			default:
				sel := selector{metric: id}
				if strings.HasPrefix(s, "{") {
					ms, rest, err := readMatchers(s)
					if err != nil {
						return p, fmt.Errorf("%s: %w", expr, err)
					}
					sel.matchers, s = ms, rest
				}
				p.selectors = append(p.selectors, sel)
			}
		}
	}
}

// readString reads the quoted string at the start of s.
func readString(s string) (val, rest string, err error) {
	q := s[0]
	for i := 1; i < len(s); i++ {
		switch s[i] {
		case '\\':
			if q != '`' {
				i++
			}
		case q:
			return s[1:i], s[i+1:], nil
		}
	}
	return "", "", fmt.Errorf("unterminated string %s", s)
}

// readMatchers reads {label op "value", ...} at the start of s.
func readMatchers(s string) ([]matcher, string, error) {
	var ms []matcher
	s = s[1:]
	for {
		s = strings.TrimLeft(s, " \t\r\n,")
		if strings.HasPrefix(s, "}") {
			return ms, s[1:], nil
		}
		l := identRE.FindString(s)
		if l == "" {
			return nil, "", fmt.Errorf("bad label matcher at %q", s)
		}
		s = strings.TrimLeft(s[len(l):], " \t")
		var op string
		for _, o := range []string{"=~", "!~", "!=", "="} {
			if strings.HasPrefix(s, o) {
				op = o
				break
			}
		}
		if op == "" {
			return nil, "", fmt.Errorf("bad operator after label %s at %q", l, s)
		}
		s = strings.TrimLeft(s[len(op):], " \t")
		if s == "" || !strings.ContainsRune("\"'`", rune(s[0])) {
			return nil, "", fmt.Errorf("label %s: value is not a string at %q", l, s)
		}
		v, rest, err := readString(s)
		if err != nil {
			return nil, "", err
		}
		ms = append(ms, matcher{l, op, v})
		s = rest
	}
}

// simpleAlternatives are regular expressions such as "read|write" that name
// values one by one.
var simpleAlternatives = regexp.MustCompile(`^[a-zA-Z0-9_]+(\|[a-zA-Z0-9_]+)*$`)

// check returns what in expr the daemons do not emit: unknown metrics, labels
// that the metric lacks, values of enumerated labels that never occur, and
// grouping labels that no metric of the expression has.
func (e emitted) check(expr string) []string {
	p, err := parsePromQL(expr)
	if err != nil {
		return []string{err.Error()}
	}
	var bad []string
	have := map[string]bool{}
	if len(p.selectors) == 0 {
		bad = append(bad, "names no metric")
	}
	for _, sel := range p.selectors {
		if sel.metric == "" {
			bad = append(bad, "a selector without a metric name")
			continue
		}
		ls, ok := e.labels[sel.metric]
		if !ok {
			bad = append(bad, fmt.Sprintf("metric %s is not emitted by rbdi or rbdt", sel.metric))
			continue
		}
		maps.Copy(have, ls)
		for _, m := range sel.matchers {
			if !ls[m.label] {
				bad = append(bad, fmt.Sprintf("%s has no label %s (it has %v)", sel.metric, m.label, slices.Sorted(maps.Keys(ls))))
				continue
			}
			vs := e.values[m.label]
			if vs == nil || strings.Contains(m.value, "$") || m.op == "!=" || m.op == "!~" && m.value == "" {
				continue
			}
			alts := []string{m.value}
			if m.op == "=~" || m.op == "!~" {
				if !simpleAlternatives.MatchString(m.value) {
					continue
				}
				alts = strings.Split(m.value, "|")
			}
			for _, v := range alts {
				if v == "" && m.op == "=" {
					continue // label="" matches the series without the label
				}
				if !vs[v] {
					bad = append(bad, fmt.Sprintf("%s{%s%s%q}: %s is never %q (it is one of %v)", sel.metric, m.label, m.op, m.value, m.label, v, slices.Sorted(maps.Keys(vs))))
				}
			}
		}
	}
	for _, g := range p.grouping {
		if len(have) > 0 && !have[g] {
			bad = append(bad, fmt.Sprintf("groups by %s, which none of its metrics has", g))
		}
	}
	return bad
}

func TestPromQLChecker(t *testing.T) {
	e := daemonMetrics(t)
	for _, tc := range []struct {
		expr string
		bad  int // problems expected
	}{
		{`rbd_device_state{role="initiator",state="failed"} == 1`, 0},
		{`sum by (instance, device, op) (rate(rbd_ops_total{role="initiator",device=~"$device"}[$__rate_interval]))`, 0},
		{`histogram_quantile(0.99, sum by (le, export) (rate(rbd_request_duration_seconds_bucket{op=~"read|write",session=""}[5m]))) > 0.1`, 0},
		{`up{job=~"rbdi|rbdt"} == 0`, 0},
		{`rate(process_cpu_seconds_total{job="rbdi"}[1m])`, 0},
		{`rbd_bytes_total{op!="none"} / ignoring(op) group_left rbd_ops_total`, 0},
		{`rbd_device_sate == 1`, 1},                    // typo in the name
		{`rbd_device_state{state="broken"}`, 1},        // no such state
		{`rbd_ops_total{op=~"read|erase"}`, 1},         // no such op
		{`rbd_ops_total{sesion=""}`, 1},                // typo in a label
		{`sum by (devce) (rbd_ops_total)`, 1},          // grouping label typo
		{`rbd_request_duration_seconds{op="read"}`, 1}, // a histogram has no plain series
		{`rbd_bytes_total{op="read"} + rbd_device_state{role="peer"}`, 1},
		{`rbd_ops_total{op="read`, 1}, // unterminated
	} {
		if got := e.check(tc.expr); len(got) != tc.bad {
			t.Errorf("check(%s) = %q, want %d problem(s)", tc.expr, got, tc.bad)
		}
	}
}

// ruleExprs returns the expr of every rule in a rules file, by alert name:
// single-line expressions and block scalars (expr: |).
func ruleExprs(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	lines := strings.Split(string(b), "\n")
	name := ""
	for i := 0; i < len(lines); i++ {
		l := strings.TrimSpace(lines[i])
		switch {
		case strings.HasPrefix(l, "- alert:") || strings.HasPrefix(l, "- record:"):
			_, name, _ = strings.Cut(l, ":")
			name = strings.TrimSpace(name)
		case strings.HasPrefix(l, "expr:"):
			v := strings.TrimSpace(strings.TrimPrefix(l, "expr:"))
			if v == "|" || v == ">" || v == "|-" || v == ">-" {
				indent := len(lines[i]) - len(strings.TrimLeft(lines[i], " "))
				var body []string
				for i+1 < len(lines) {
					next := lines[i+1]
					if strings.TrimSpace(next) != "" && len(next)-len(strings.TrimLeft(next, " ")) <= indent {
						break
					}
					body = append(body, strings.TrimSpace(next))
					i++
				}
				v = strings.Join(body, " ")
			}
			if name == "" {
				t.Fatalf("%s: an expr before any alert or record", path)
			}
			out[name] = strings.TrimSpace(v)
		}
	}
	if len(out) == 0 {
		t.Fatalf("%s: no rules found", path)
	}
	return out
}

func TestAlertRulesNameEmittedMetrics(t *testing.T) {
	e := daemonMetrics(t)
	rules := ruleExprs(t, alertRules)
	for _, want := range []string{"RbdDaemonDown", "RbdDeviceFailed", "RbdDeviceReconnecting", "RbdDeviceNotConnected",
		"RbdRequestErrors", "RbdHighLatency", "RbdExportUnavailable"} {
		if rules[want] == "" {
			t.Errorf("%s: no alert %s", alertRules, want)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(rules)) {
		for _, p := range e.check(rules[name]) {
			t.Errorf("%s: alert %s: %s\n\texpr: %s", alertRules, name, p, rules[name])
		}
	}
}

// dashboardExprs returns every query of the dashboard: the panels' targets
// (rows' nested panels too) and the template variables' label_values().
func dashboardExprs(t *testing.T, path string) (exprs map[string]string, labelQueries map[string][2]string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Title  string            `json:"title"`
		UID    string            `json:"uid"`
		Panels []json.RawMessage `json:"panels"`
		Templ  struct {
			List []struct {
				Name  string          `json:"name"`
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if d.Title == "" || d.UID == "" {
		t.Errorf("%s: no title or uid", path)
	}
	exprs = map[string]string{}
	type panel struct {
		ID      int               `json:"id"`
		Type    string            `json:"type"`
		Title   string            `json:"title"`
		Panels  []json.RawMessage `json:"panels"`
		Targets []struct {
			RefID string `json:"refId"`
			Expr  string `json:"expr"`
		} `json:"targets"`
	}
	var walk func([]json.RawMessage)
	walk = func(raw []json.RawMessage) {
		for _, r := range raw {
			var p panel
			if err := json.Unmarshal(r, &p); err != nil {
				t.Fatalf("%s: panel: %v", path, err)
			}
			walk(p.Panels)
			if p.Type != "row" && len(p.Targets) == 0 {
				t.Errorf("%s: panel %q has no query", path, p.Title)
			}
			for _, tg := range p.Targets {
				key := fmt.Sprintf("panel %d %q target %s", p.ID, p.Title, tg.RefID)
				if _, dup := exprs[key]; dup {
					t.Errorf("%s: two panels are %s", path, key)
				}
				if strings.TrimSpace(tg.Expr) == "" {
					t.Errorf("%s: %s has no expr", path, key)
				}
				exprs[key] = tg.Expr
			}
		}
	}
	walk(d.Panels)
	labelQueries = map[string][2]string{}
	lv := regexp.MustCompile(`^label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)$`)
	for _, v := range d.Templ.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		var s string
		if json.Unmarshal(v.Query, &s) != nil {
			if err := json.Unmarshal(v.Query, &q); err != nil {
				t.Fatalf("%s: variable %s: query: %v", path, v.Name, err)
			}
			s = q.Query
		}
		m := lv.FindStringSubmatch(strings.TrimSpace(s))
		if m == nil {
			t.Errorf("%s: variable %s: query %q is not label_values(SELECTOR, LABEL)", path, v.Name, s)
			continue
		}
		labelQueries["variable "+v.Name] = [2]string{m[1], m[2]}
	}
	return exprs, labelQueries
}

func TestDashboardNamesEmittedMetrics(t *testing.T) {
	e := daemonMetrics(t)
	exprs, vars := dashboardExprs(t, dashboardJSON)
	if len(exprs) < 10 {
		t.Fatalf("%s: only %d queries", dashboardJSON, len(exprs))
	}
	used := map[string]bool{}
	for _, key := range slices.Sorted(maps.Keys(exprs)) {
		for _, p := range e.check(exprs[key]) {
			t.Errorf("%s: %s: %s\n\texpr: %s", dashboardJSON, key, p, exprs[key])
		}
		if pe, err := parsePromQL(exprs[key]); err == nil {
			for _, s := range pe.selectors {
				used[s.metric] = true
			}
		}
	}
	for _, key := range slices.Sorted(maps.Keys(vars)) {
		sel, label := vars[key][0], vars[key][1]
		for _, p := range e.check(sel) {
			t.Errorf("%s: %s: %s", dashboardJSON, key, p)
		}
		if pe, err := parsePromQL(sel); err == nil && len(pe.selectors) == 1 && !e.labels[pe.selectors[0].metric][label] {
			t.Errorf("%s: %s: label_values of %s, which has no label %s", dashboardJSON, key, pe.selectors[0].metric, label)
		}
	}
	// What the issue asks the dashboard to show, per device.
	for _, m := range []string{"rbd_ops_total", "rbd_bytes_total", "rbd_request_duration_seconds_bucket", "rbd_inflight_requests",
		"rbd_errors_total", "rbd_reconnects_total", "rbd_device_state"} {
		if !used[m] {
			t.Errorf("%s: no panel shows %s", dashboardJSON, m)
		}
	}
}

// TestMetricsDocumented: docs/metrics.md names every rbd_ metric the daemons
// emit, and names none they do not.
func TestMetricsDocumented(t *testing.T) {
	e := daemonMetrics(t)
	b, err := os.ReadFile(filepath.Join(repoRoot(t), metricsDocPath))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	for name := range e.labels {
		if !strings.HasPrefix(name, "rbd_") {
			continue
		}
		// a histogram is documented by its name, not its series' names
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if base := strings.TrimSuffix(name, suf); base != name && e.labels[base+"_bucket"] != nil {
				name = base
			}
		}
		if !strings.Contains(doc, "`"+name+"`") {
			t.Errorf("%s does not document %s", metricsDocPath, name)
		}
	}
	for _, m := range regexp.MustCompile("`(rbd_[a-z_]+)").FindAllStringSubmatch(doc, -1) {
		n := m[1]
		if e.labels[n] == nil && e.labels[n+"_bucket"] == nil {
			t.Errorf("%s names %s, which the daemons do not emit", metricsDocPath, n)
		}
	}
	for _, l := range slices.Concat(stats.InitiatorInfoLabels, stats.TargetInfoLabels, initiator.DeviceStates, stats.ExportStates) {
		if !strings.Contains(doc, "`"+l+"`") {
			t.Errorf("%s does not mention %s (an info label or a state)", metricsDocPath, l)
		}
	}
}

// promtool returns promtool's path, or skips the test saying how to get it.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not found: the alert rules are not checked; install Debian's prometheus package (scripts/deps.sh does)")
	}
	return p
}

func TestPromtool(t *testing.T) {
	bin := promtool(t)
	for _, args := range [][]string{
		{"check", "rules", filepath.Base(alertRules)},
		{"test", "rules", filepath.Base(alertTests)},
		{"check", "config", "--syntax-only", filepath.Base(scrapeExample)},
	} {
		cmd := exec.Command(bin, args...)
		cmd.Dir = "prometheus"
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		} else if !strings.Contains(string(out), "SUCCESS") {
			t.Errorf("promtool %s said no SUCCESS:\n%s", strings.Join(args, " "), out)
		}
	}
}

// TestOperationsGuideAlerts: docs/operations.md's table of alerts lists
// exactly the rules of rbd-alerts.yml, and the README links the guide.
func TestOperationsGuideAlerts(t *testing.T) {
	root := repoRoot(t)
	b, err := os.ReadFile(filepath.Join(root, "docs/operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| `(Rbd[A-Za-z]+)` \\|").FindAllStringSubmatch(string(b), -1) {
		documented[m[1]] = true
	}
	rules := ruleExprs(t, alertRules)
	for name := range rules {
		if !documented[name] {
			t.Errorf("docs/operations.md does not list the alert %s", name)
		}
	}
	for name := range documented {
		if _, ok := rules[name]; !ok {
			t.Errorf("docs/operations.md lists the alert %s, which %s does not have", name, alertRules)
		}
	}
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, link := range []string{"(docs/operations.md)", "(docs/metrics.md)"} {
		if !strings.Contains(string(readme), link) {
			t.Errorf("README.md does not link %s", link)
		}
	}
}
