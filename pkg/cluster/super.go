package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// SuperOptions describe a NATS supercluster: clusters of JetStream servers
// joined by gateways, as NATS is deployed across regions.
type SuperOptions struct {
	// Dir holds each server's JetStream store (Dir/<cluster>/<server>).
	// Required.
	Dir string
	// Clusters names the clusters (each one's cluster and gateway name);
	// default c1, c2, c3.
	Clusters []string
	// Servers is the number of servers per cluster; default 1.
	Servers int
	// ReadyTimeout bounds the wait for the JetStream meta group to form
	// with every server; default 30s.
	ReadyTimeout time.Duration
}

// Super is a running supercluster. Every gateway connection runs through
// a gateway proxy in front of its target server, which knows the cluster
// that dials it, so CutGateway can cut two clusters apart while both
// still reach the others. Each server carries the tag "region:<cluster>".
//
// The cut is keyed on the dialing cluster, not on the address it dials:
// a server that accepts a gateway tells the dialer every address it knows
// for the other clusters (gossip), so a cluster learns the addresses the
// others dial each other by. A proxy per pair of clusters, cut by
// address, was bypassed that way: a cut-off cluster kept dialing out
// through the proxies of the other two, its messages (meta leader
// heartbeats, vote requests) still reaching them while nothing came back.
type Super struct {
	o        SuperOptions
	clusters map[string][]*Server
	// gw holds the gateway proxies in front of each cluster's servers,
	// which every other cluster dials.
	gw map[string][]*Proxy
	// nowhere is a closed door each server advertises as its gateway
	// address, so that no server learns another's real gateway address
	// and bypasses the proxies.
	nowhere *Proxy
}

func (o *SuperOptions) defaults() {
	if len(o.Clusters) == 0 {
		o.Clusters = []string{"c1", "c2", "c3"}
	}
	if o.Servers == 0 {
		o.Servers = 1
	}
	if o.ReadyTimeout == 0 {
		o.ReadyTimeout = 30 * time.Second
	}
}

// StartSuper starts the supercluster and returns once its JetStream meta
// group has a leader that every server follows. The caller stops it with
// Stop, also after an error.
func StartSuper(o SuperOptions) (*Super, error) {
	o.defaults()
	if o.Dir == "" {
		return nil, errors.New("cluster: SuperOptions.Dir is required")
	}
	s := &Super{o: o, clusters: map[string][]*Server{}, gw: map[string][]*Proxy{}}
	var err error
	if s.nowhere, err = StartProxy("127.0.0.1:1"); err != nil {
		return s, err
	}
	s.nowhere.Cut()
	// Every port is chosen before any server starts: a clustered JetStream
	// needs its routes and gateways when it starts, and a restarted server
	// must come back on the same ones.
	// The ports stay reserved while the proxies pick theirs, so that no
	// proxy takes a server's port.
	type ports struct{ client, route, gateway string }
	addrs := map[string][]ports{}
	var reserved []net.Listener
	defer func() {
		for _, ln := range reserved {
			ln.Close()
		}
	}()
	for _, c := range o.Clusters {
		for range o.Servers {
			var p ports
			for _, a := range []*string{&p.client, &p.route, &p.gateway} {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					return s, err
				}
				reserved = append(reserved, ln)
				*a = ln.Addr().String()
			}
			addrs[c] = append(addrs[c], p)
		}
	}
	for _, c := range o.Clusters {
		for _, p := range addrs[c] {
			px, err := StartGatewayProxy(p.gateway)
			if err != nil {
				return s, err
			}
			s.gw[c] = append(s.gw[c], px)
		}
	}
	for _, ln := range reserved {
		ln.Close()
	}
	reserved = nil
	for _, c := range o.Clusters {
		var routes []*url.URL
		for _, p := range addrs[c] {
			routes = append(routes, &url.URL{Scheme: "nats", Host: p.route})
		}
		for i, p := range addrs[c] {
			raw, err := s.serverOptions(c, i, p.client, p.route, p.gateway, routes)
			if err != nil {
				return s, err
			}
			srv, err := StartServer(ServerOptions{Dir: filepath.Join(o.Dir, c, raw.ServerName), Raw: raw})
			if err != nil {
				return s, err
			}
			s.clusters[c] = append(s.clusters[c], srv)
		}
	}
	return s, s.WaitReady(o.ReadyTimeout)
}

// serverOptions are server i of cluster c's options: routes to its
// cluster (a single server routes to itself, which JetStream needs to
// run clustered), a gateway to every other cluster through its servers'
// gateway proxies.
func (s *Super) serverOptions(c string, i int, client, route, gateway string, routes []*url.URL) (*server.Options, error) {
	host, cport, err := splitHostPort(client)
	if err != nil {
		return nil, err
	}
	_, rport, err := splitHostPort(route)
	if err != nil {
		return nil, err
	}
	_, gport, err := splitHostPort(gateway)
	if err != nil {
		return nil, err
	}
	var remotes []*server.RemoteGatewayOpts
	for _, to := range s.o.Clusters {
		if to == c {
			continue
		}
		r := &server.RemoteGatewayOpts{Name: to}
		for _, px := range s.gw[to] {
			r.URLs = append(r.URLs, &url.URL{Scheme: "nats", Host: px.Addr()})
		}
		remotes = append(remotes, r)
	}
	o := &server.Options{
		ServerName: fmt.Sprintf("%s-n%d", c, i+1),
		Host:       host,
		Port:       cport,
		JetStream:  true,
		MaxPayload: 8 << 20,
		Cluster:    server.ClusterOpts{Name: c, Host: host, Port: rport},
		Routes:     routes,
		Gateway: server.GatewayOpts{
			Name: c, Host: host, Port: gport, Advertise: s.nowhere.Addr(),
			Gateways: remotes,
		},
	}
	o.Tags.Add("region:" + c)
	return o, nil
}

func splitHostPort(addr string) (string, int, error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	return h, port, err
}

// RunSuper is StartSuper for tests: it fails t if the supercluster does
// not start, and stops it at the end of the test. Dir defaults to a
// temporary directory.
func RunSuper(t TB, o SuperOptions) *Super {
	t.Helper()
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	s, err := StartSuper(o)
	t.Cleanup(s.Stop)
	if err != nil {
		t.Fatalf("start supercluster: %v", err)
	}
	return s
}

// Clusters names the clusters in order.
func (s *Super) Clusters() []string { return append([]string(nil), s.o.Clusters...) }

// Servers are cluster c's servers.
func (s *Super) Servers(c string) []*Server { return s.clusters[c] }

// URL is a client URL list of cluster c's servers, for a sidecar of the
// DC that lives there.
func (s *Super) URL(c string) string {
	var urls []string
	for _, srv := range s.clusters[c] {
		urls = append(urls, srv.URL())
	}
	return strings.Join(urls, ",")
}

// CutGateway cuts the gateway connections between clusters a and b, both
// ways; each still reaches the other clusters.
func (s *Super) CutGateway(a, b string) {
	for _, px := range s.gw[b] {
		px.CutFrom(a)
	}
	for _, px := range s.gw[a] {
		px.CutFrom(b)
	}
}

// HealGateway lets clusters a and b connect again.
func (s *Super) HealGateway(a, b string) {
	for _, px := range s.gw[b] {
		px.HealFrom(a)
	}
	for _, px := range s.gw[a] {
		px.HealFrom(b)
	}
}

// Isolate cuts cluster c off from every other cluster.
func (s *Super) Isolate(c string) {
	for _, o := range s.o.Clusters {
		if o != c {
			s.CutGateway(c, o)
		}
	}
}

// Rejoin heals every gateway of cluster c.
func (s *Super) Rejoin(c string) {
	for _, o := range s.o.Clusters {
		if o != c {
			s.HealGateway(c, o)
		}
	}
}

// Links lists the gateway connections between the running servers of
// clusters a and b, as the servers of a report them ("east-n1 -> west"
// for an outbound one, "east-n1 <- west" for an inbound one): empty once
// a cut between them holds.
func (s *Super) Links(a, b string) []string {
	var out []string
	for _, srv := range s.clusters[a] {
		ns := srv.NATS()
		if ns == nil {
			continue
		}
		gz, err := ns.Gatewayz(&server.GatewayzOptions{Name: b})
		if err != nil {
			out = append(out, fmt.Sprintf("%s: gatewayz: %v", ns.Name(), err))
			continue
		}
		if g := gz.OutboundGateways[b]; g != nil && g.Connection != nil {
			out = append(out, fmt.Sprintf("%s -> %s", ns.Name(), b))
		}
		for range gz.InboundGateways[b] {
			out = append(out, fmt.Sprintf("%s <- %s", ns.Name(), b))
		}
	}
	return out
}

// StopCluster shuts down every server of cluster c.
func (s *Super) StopCluster(c string) {
	for _, srv := range s.clusters[c] {
		srv.Stop()
	}
}

// StartCluster starts cluster c's servers again on their addresses and
// stores.
func (s *Super) StartCluster(c string) error {
	var errs []error
	for _, srv := range s.clusters[c] {
		errs = append(errs, srv.Start())
	}
	return errors.Join(errs...)
}

// WaitReady waits until every server runs, every gateway is connected
// both ways, and the JetStream meta group has one leader with every
// server as a current peer, and every server counts every server in the
// group.
func (s *Super) WaitReady(timeout time.Duration) error {
	return Wait(context.Background(), timeout, 50*time.Millisecond, "supercluster ready", s.ready)
}

func (s *Super) ready() (bool, string) {
	var why []string
	total := 0
	for _, c := range s.o.Clusters {
		total += len(s.clusters[c])
	}
	leaders := 0
	for _, c := range s.o.Clusters {
		for _, srv := range s.clusters[c] {
			ns := srv.NATS()
			if ns == nil {
				why = append(why, srv.Addr()+" stopped")
				continue
			}
			// Every server dials one server of each other cluster; which
			// ones dial it varies, so inbound gateways are not counted.
			gz, err := ns.Gatewayz(&server.GatewayzOptions{})
			if err != nil {
				why = append(why, fmt.Sprintf("%s: gatewayz: %v", ns.Name(), err))
			} else if out := len(gz.OutboundGateways); out < len(s.o.Clusters)-1 {
				why = append(why, fmt.Sprintf("%s: %d outbound gateways", ns.Name(), out))
			}
			if ns.JetStreamIsLeader() {
				leaders++
				if p := ns.JetStreamClusterPeers(); len(p) != total {
					why = append(why, fmt.Sprintf("leader %s sees peers %v", ns.Name(), p))
				}
			}
			if !ns.JetStreamIsCurrent() {
				why = append(why, ns.Name()+" not current")
			}
			// The meta group starts each server with the expected size,
			// shrinks it to the peers known when the first leader is
			// elected, and grows it again as the leader's AddPeer entries
			// commit. Until every server counts every peer, a cut can
			// leave the rest without a quorum they can form: seen cutting
			// off the leader's region right after the start, the other two
			// counted a group of two (the leader and one of them) and
			// elected no one.
			if jsz, err := ns.Jsz(&server.JSzOptions{}); err != nil || jsz.Meta == nil {
				why = append(why, fmt.Sprintf("%s: jsz: %v", ns.Name(), err))
			} else if jsz.Meta.Size != total {
				why = append(why, fmt.Sprintf("%s counts %d meta peers of %d", ns.Name(), jsz.Meta.Size, total))
			}
		}
	}
	if leaders != 1 {
		why = append(why, fmt.Sprintf("%d meta leaders", leaders))
	}
	return len(why) == 0, strings.Join(why, "; ")
}

// MetaLeader names the server that leads the JetStream meta group, and its
// cluster, or "" when none does.
func (s *Super) MetaLeader() (srvName, clusterName string) {
	for _, c := range s.o.Clusters {
		for _, srv := range s.clusters[c] {
			if ns := srv.NATS(); ns != nil && ns.JetStreamIsLeader() {
				return ns.Name(), c
			}
		}
	}
	return "", ""
}

// LeaderAmong names the meta leader that every running server of the
// given clusters follows, when it is one of them and leads: a cut-off
// region's old leader goes on believing it leads for a while (until it
// notices it lost its quorum), so MetaLeader alone does not tell whether
// the others elected a new one. It returns "" otherwise.
func (s *Super) LeaderAmong(clusters ...string) string {
	leader := ""
	for _, c := range clusters {
		for _, seen := range s.LeaderSeen(c) {
			if seen == "" || (leader != "" && seen != leader) {
				return ""
			}
			leader = seen
		}
	}
	for _, c := range clusters {
		for _, srv := range s.clusters[c] {
			if ns := srv.NATS(); ns != nil && ns.Name() == leader && ns.JetStreamIsLeader() {
				return leader
			}
		}
	}
	return ""
}

// LeaderSeen returns, for each running server of cluster c, the meta
// leader it follows ("" for none).
func (s *Super) LeaderSeen(c string) []string {
	var out []string
	for _, srv := range s.clusters[c] {
		ns := srv.NATS()
		if ns == nil {
			continue
		}
		jsz, err := ns.Jsz(&server.JSzOptions{})
		if err != nil || jsz.Meta == nil {
			out = append(out, "")
			continue
		}
		out = append(out, jsz.Meta.Leader)
	}
	return out
}

// MetaView says how each running server sees the JetStream meta group:
// its leader and which peers it takes as current, for failure messages.
func (s *Super) MetaView() string {
	var b strings.Builder
	for _, c := range s.o.Clusters {
		for _, srv := range s.clusters[c] {
			ns := srv.NATS()
			if ns == nil {
				continue
			}
			jsz, err := ns.Jsz(&server.JSzOptions{})
			if err != nil || jsz.Meta == nil {
				fmt.Fprintf(&b, "%s: %v; ", ns.Name(), err)
				continue
			}
			fmt.Fprintf(&b, "%s: leader %q size %d peers [", ns.Name(), jsz.Meta.Leader, jsz.Meta.Size)
			for _, p := range jsz.Meta.Replicas {
				fmt.Fprintf(&b, " %s current=%t offline=%t active=%s", p.Name, p.Current, p.Offline, p.Active)
			}
			b.WriteString(" ]; ")
		}
	}
	return b.String()
}

// Stop shuts every server and proxy down; calling it again is harmless.
func (s *Super) Stop() {
	if s == nil {
		return
	}
	for _, servers := range s.clusters {
		for _, srv := range servers {
			srv.Stop()
		}
	}
	for _, pxs := range s.gw {
		for _, px := range pxs {
			px.Close()
		}
	}
	if s.nowhere != nil {
		s.nowhere.Close()
	}
}
