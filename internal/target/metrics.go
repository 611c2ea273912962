package target

import (
	"github.com/prometheus/client_golang/prometheus"
)

// limitsCollector serves the target's per-peer limits: what each initiator
// address holds now, and what was refused since start, by reason.
type limitsCollector struct {
	usage                            func() Usage
	conns, handshakes, pinned, refus *prometheus.Desc
}

// LimitsCollector serves usage's per-peer counts and refusals as the
// rbd_target_peer_* and rbd_target_refused_total metrics (rbdt: Server.Usage).
func LimitsCollector(usage func() Usage) prometheus.Collector {
	return &limitsCollector{usage: usage,
		conns:      prometheus.NewDesc("rbd_target_peer_connections", "Connections of an initiator address, from the connect request on (limit: --max-connections-per-peer).", []string{"peer"}, nil),
		handshakes: prometheus.NewDesc("rbd_target_peer_handshakes", "Connections of an initiator address not OPENed yet (limit: --max-handshakes-per-peer).", []string{"peer"}, nil),
		pinned:     prometheus.NewDesc("rbd_target_peer_pinned_bytes", "Slot memory registered for an initiator address's connections (limit: --max-pinned-per-peer).", []string{"peer"}, nil),
		refus: prometheus.NewDesc("rbd_target_refused_total", "Connections and OPENs refused, by reason: connection_limit, peer_connections, peer_handshakes, peer_memory, not_allowed, auth_required, auth_failed, open_timeout.",
			[]string{"reason"}, nil),
	}
}

// RefusalReasons are the reasons of rbd_target_refused_total, each always
// present (0 until one happens).
var RefusalReasons = []string{RefusedConnLimit, RefusedPeerConns, RefusedPeerHandshakes, RefusedPeerMemory,
	RefusedNotAllowed, RefusedAuthRequired, RefusedAuthFailed, RefusedOpenTimeout}

func (l *limitsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- l.conns
	ch <- l.handshakes
	ch <- l.pinned
	ch <- l.refus
}

func (l *limitsCollector) Collect(ch chan<- prometheus.Metric) {
	u := l.usage()
	for _, p := range u.Peers {
		a := p.Addr.String()
		ch <- prometheus.MustNewConstMetric(l.conns, prometheus.GaugeValue, float64(p.Conns), a)
		ch <- prometheus.MustNewConstMetric(l.handshakes, prometheus.GaugeValue, float64(p.Handshakes), a)
		ch <- prometheus.MustNewConstMetric(l.pinned, prometheus.GaugeValue, float64(p.PinnedBytes), a)
	}
	for _, r := range RefusalReasons {
		ch <- prometheus.MustNewConstMetric(l.refus, prometheus.CounterValue, float64(u.Refused[r]), r)
	}
}
