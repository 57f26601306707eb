package chaos

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"coffer/api"
	"coffer/internal/testcluster"
	"coffer/internal/tlsutil"
)

// Docker runs coffer containers (three voters unless DockerOptions.Nodes
// says otherwise, and a read replica with DockerOptions.ReadReplica) on a
// network of their own and
// injects faults with the docker CLI only: docker kill, start, stop,
// restart, pause, unpause, network disconnect and connect. Nothing leaves
// this machine and no host network setting is touched.
//
// The nodes run with TLS unless DockerOptions.Insecure: NewDocker makes a
// CA, one node certificate for every node (the container names, their
// addresses on the cluster network, localhost and 127.0.0.1), mounted
// read-only at /certs, and the client certificate root for this process's
// calls (init requires a client certificate of the CA).
//
// Each container sits on two networks: Docker's default bridge, through
// which its API port is published on 127.0.0.1 (a fixed port per node, so
// that it survives restarts), and the cluster network, on which the nodes
// reach each other by name (node id = container name = network alias) at
// a fixed address. A partition disconnects a node from the cluster
// network only: peers lose it (Raft, gossip, forwarding), clients still
// reach it, as in the in-process driver.
type Docker struct {
	opts   DockerOptions
	subnet string // "10.213.7" of 10.213.7.0/24
	key    string // the gossip key, base64
	nodes  []*dockerNode
	// certs holds the CA key, node/ (mounted at /certs) and client/; tls
	// is the clients' configuration. Both are empty with Insecure.
	certs string
	tls   *tls.Config
	// dataDir holds the nodes' data tmpfs mounts with TmpfsData.
	dataDir string

	mu      sync.Mutex
	created bool
}

type dockerNode struct {
	name    string
	ip      string
	port    int  // API port published on 127.0.0.1
	replica bool // a read replica: -read-replica, no -bootstrap-expect
	// data is the host tmpfs mounted at /data with TmpfsData.
	data string
	// image is the image the container runs when not DockerOptions.Image
	// (after an Upgrade).
	image string
}

// DockerOptions configure a Docker cluster. The zero value of each field
// means its default.
type DockerOptions struct {
	// Image is the coffer image (default coffer:dev, built by make docker).
	Image string
	// Prefix names the containers (Prefix-1 … Prefix-<Nodes>, and
	// Prefix-r1 for the read replica), their volumes, and the cluster
	// network (Prefix), and labels them (coffer-chaos=Prefix): runs with
	// different prefixes may share a Docker engine. Default coffer-chaos.
	Prefix string
	// Nodes is the number of voters, started with -bootstrap-expect=Nodes
	// (default 3).
	Nodes int
	// ReadReplica adds a read replica: a node started with -read-replica
	// that joins the voters, is added to Raft as a non-voter, and serves
	// stale reads (Driver.Replicas).
	ReadReplica bool
	// FirstPort, when set, publishes node i's API on 127.0.0.1 at
	// FirstPort+i-1 (the read replica's after the voters'), so that
	// concurrent runs can keep to port ranges of their own; by default
	// each node gets a free port below the ephemeral range.
	FirstPort int
	// Args are extra `coffer server` flags for every node (e.g.
	// -raft-heartbeat-timeout=300ms).
	Args []string
	// Hold is how long a pause or partition lasts (default 2s, several
	// times the default 300ms election timeout).
	Hold time.Duration
	// Logf receives the docker commands run.
	Logf func(format string, args ...any)
	// Insecure runs the nodes -insecure (plaintext everywhere), for a
	// comparison with the default TLS run.
	Insecure bool
	// Memory, when set, is every container's memory limit in bytes (swap
	// included): docker run --memory.
	Memory int64
	// TmpfsData puts each node's /data on a tmpfs of its own mounted on
	// the host (needs root) instead of a Docker volume, so that the
	// disk-full scenario can limit its size (LimitDisk).
	TmpfsData bool
}

// DockerAvailable reports why Docker cannot be used, or nil.
func DockerAvailable(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	_, err := docker(cctx, "info", "--format", "{{.ServerVersion}}")
	return err
}

// docker runs the docker CLI and returns its trimmed standard output.
func docker(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "docker", args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("docker %s: %w: %s", strings.Join(redact(args), " "), err, strings.TrimSpace(errb.String()))
	}
	return strings.TrimSpace(out.String()), nil
}

// redact hides the cluster key in a command line shown in an error.
func redact(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if strings.HasPrefix(a, "COFFER_CLUSTER_KEY=") {
			a = "COFFER_CLUSTER_KEY=…"
		}
		out[i] = a
	}
	return out
}

// NewDocker removes what an earlier run may have left under the same
// names, creates the network, the volumes and the containers, and
// starts them. They come up sealed and uninitialized; NewCluster
// initializes them. Call Close (even when NewDocker fails) to remove
// everything.
func NewDocker(ctx context.Context, opts DockerOptions) (*Docker, error) {
	if opts.Image == "" {
		opts.Image = "coffer:dev"
	}
	if opts.Prefix == "" {
		opts.Prefix = "coffer-chaos"
	}
	if opts.Hold == 0 {
		opts.Hold = 2 * time.Second
	}
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	d := &Docker{opts: opts}
	if _, err := docker(ctx, "image", "inspect", "--format", "{{.Id}}", opts.Image); err != nil {
		return d, fmt.Errorf("chaos: image %s is missing: build it with `make docker`: %w", opts.Image, err)
	}
	key := make([]byte, 32)
	rand.Read(key)
	d.key = base64.StdEncoding.EncodeToString(key)
	for i := 1; i <= opts.Nodes; i++ {
		d.nodes = append(d.nodes, &dockerNode{name: fmt.Sprintf("%s-%d", opts.Prefix, i)})
	}
	if opts.ReadReplica {
		d.nodes = append(d.nodes, &dockerNode{name: opts.Prefix + "-r1", replica: true})
	}
	d.removeAll(ctx)
	d.mu.Lock()
	d.created = true
	d.mu.Unlock()
	if err := d.createNetwork(ctx); err != nil {
		return d, err
	}
	for i, n := range d.nodes {
		n.ip = fmt.Sprintf("%s.%d", d.subnet, 10+i)
	}
	if !opts.Insecure {
		if err := d.makeCerts(); err != nil {
			return d, err
		}
	}
	if opts.TmpfsData {
		dir, err := os.MkdirTemp("", "coffer-chaos-data-")
		if err != nil {
			return d, err
		}
		d.dataDir = dir
		for _, n := range d.nodes {
			if err := d.mountData(n); err != nil {
				return d, err
			}
		}
	}
	for i, n := range d.nodes {
		n.port = opts.FirstPort + i
		if opts.FirstPort == 0 {
			port, err := testcluster.FreePort()
			if err != nil {
				return d, err
			}
			n.port = port
		}
		if err := d.create(ctx, n, d.join()); err != nil {
			return d, err
		}
	}
	args := []string{"start"}
	for _, n := range d.nodes {
		args = append(args, n.name)
	}
	if _, err := docker(ctx, args...); err != nil {
		return d, err
	}
	for _, n := range d.nodes {
		// The published port is the one asked for.
		out, err := docker(ctx, "port", n.name, "8400/tcp")
		if err != nil {
			return d, err
		}
		if want := net.JoinHostPort("127.0.0.1", strconv.Itoa(n.port)); !strings.Contains(out, want) {
			return d, fmt.Errorf("chaos: %s publishes its API on %q, want %s", n.name, out, want)
		}
	}
	return d, nil
}

// makeCerts makes the cluster's CA in a temporary directory (removed by
// Close), one node certificate for every node and the client certificate
// root, and loads the clients' TLS configuration.
func (d *Docker) makeCerts() error {
	dir, err := os.MkdirTemp("", "coffer-chaos-certs-")
	if err != nil {
		return err
	}
	d.certs = dir
	caKey := filepath.Join(dir, "ca.key")
	nodeDir, clientDir := filepath.Join(dir, "node"), filepath.Join(dir, "client")
	if err := tlsutil.CreateCA(nodeDir, caKey, 0, false); err != nil {
		return fmt.Errorf("chaos: %w", err)
	}
	hosts := []string{"localhost", "127.0.0.1"}
	for _, n := range d.nodes {
		hosts = append(hosts, n.name, n.ip)
	}
	if err := tlsutil.CreateNode(nodeDir, caKey, hosts, 0, false); err != nil {
		return fmt.Errorf("chaos: %w", err)
	}
	// The client certificate lives apart from what the nodes mount.
	ca, err := os.ReadFile(filepath.Join(nodeDir, tlsutil.CAFile))
	if err != nil {
		return err
	}
	if err := os.MkdirAll(clientDir, 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(clientDir, tlsutil.CAFile), ca, 0o644); err != nil {
		return err
	}
	if err := tlsutil.CreateClient(clientDir, caKey, "root", 0, false); err != nil {
		return fmt.Errorf("chaos: %w", err)
	}
	files := tlsutil.ClientFiles(clientDir, "root")
	d.tls, err = api.LoadTLS(files.CA, files.Cert, files.Key, "")
	return err
}

// createNetwork creates the cluster network on a /24 of 10.213.0.0/16
// that no other network uses (fixed addresses need a subnet of our own).
func (d *Docker) createNetwork(ctx context.Context) error {
	used, err := d.subnetsInUse(ctx)
	if err != nil {
		return err
	}
	// A subnet listed as free may still overlap a wider one: try a few.
	tries := 0
	for range 256 {
		d.subnet = fmt.Sprintf("10.213.%d", mrand.IntN(256))
		if used[d.subnet+".0/24"] {
			continue
		}
		used[d.subnet+".0/24"] = true
		_, err = docker(ctx, "network", "create", "--driver", "bridge", "--label", d.label(),
			"--subnet", d.subnet+".0/24", d.opts.Prefix)
		if tries++; err == nil || tries == 5 {
			return err
		}
	}
	if err != nil {
		return err
	}
	return fmt.Errorf("no free /24 in 10.213.0.0/16 for the chaos network: remove old networks (docker network prune)")
}

// subnetsInUse lists the subnets of the engine's networks, so that the
// cluster network gets one no other network overlaps.
func (d *Docker) subnetsInUse(ctx context.Context) (map[string]bool, error) {
	ids, err := docker(ctx, "network", "ls", "-q")
	if err != nil {
		return nil, err
	}
	used := map[string]bool{}
	if strings.TrimSpace(ids) == "" {
		return used, nil
	}
	out, err := docker(ctx, append([]string{"network", "inspect", "--format", "{{range .IPAM.Config}}{{.Subnet}} {{end}}"}, strings.Fields(ids)...)...)
	if err != nil {
		return nil, err
	}
	for _, s := range strings.Fields(out) {
		used[s] = true
	}
	return used, nil
}

// label is the label on this cluster's containers and network.
func (d *Docker) label() string { return "coffer-chaos=" + d.opts.Prefix }

// create creates node n's container on the default bridge (its API
// published at n.port) and connects it to the cluster network at its
// address.
func (d *Docker) create(ctx context.Context, n *dockerNode, join string) error {
	args := []string{"create", "--name", n.name, "--label", d.label(),
		"-e", "COFFER_CLUSTER_KEY=" + d.key,
		"-p", fmt.Sprintf("127.0.0.1:%d:8400", n.port),
	}
	if d.opts.Memory > 0 {
		args = append(args, fmt.Sprintf("--memory=%d", d.opts.Memory), fmt.Sprintf("--memory-swap=%d", d.opts.Memory))
	}
	if n.data != "" {
		args = append(args, "-v", n.data+":/data")
	} else {
		args = append(args, "-v", n.name+":/data")
	}
	security := "-insecure"
	if d.certs != "" {
		args = append(args, "-v", filepath.Join(d.certs, "node")+":/certs:ro")
		security = "-certs-dir=/certs"
	}
	role := fmt.Sprintf("-bootstrap-expect=%d", d.opts.Nodes)
	if n.replica {
		role = "-read-replica"
	}
	image := d.opts.Image
	if n.image != "" {
		image = n.image
	}
	args = append(args, image,
		"server", "-node-id="+n.name, "-data-dir=/data",
		"-api-addr=0.0.0.0:8400", "-http-addr=0.0.0.0:8200", "-raft-addr=0.0.0.0:8401", "-gossip-addr=0.0.0.0:8402",
		"-advertise="+n.name, role, "-join="+join, security)
	args = append(args, d.opts.Args...)
	if _, err := docker(ctx, args...); err != nil {
		return err
	}
	_, err := docker(ctx, "network", "connect", "--ip", n.ip, "--alias", n.name, d.opts.Prefix, n.name)
	return err
}

// join is every voter's gossip address, for -join.
func (d *Docker) join() string {
	var join []string
	for _, n := range d.nodes {
		if !n.replica {
			join = append(join, n.name+":8402")
		}
	}
	return strings.Join(join, ",")
}

// removeAll removes the containers (with their volumes), the network and
// the volumes of this cluster's names, ignoring what does not exist.
func (d *Docker) removeAll(ctx context.Context) {
	var names []string
	for _, n := range d.nodes {
		names = append(names, n.name)
	}
	docker(ctx, append([]string{"rm", "-f", "-v"}, names...)...)
	docker(ctx, "network", "rm", d.opts.Prefix)
	docker(ctx, append([]string{"volume", "rm", "-f"}, names...)...)
}

// Close removes the containers, the network, the volumes and the
// certificates. It is idempotent.
func (d *Docker) Close() error {
	d.mu.Lock()
	created, certs := d.created, d.certs
	d.created, d.certs = false, ""
	d.mu.Unlock()
	if certs != "" {
		if err := os.RemoveAll(certs); err != nil {
			return fmt.Errorf("chaos: removing the certificates: %w", err)
		}
	}
	if !created {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	d.removeAll(ctx)
	out, err := docker(ctx, "ps", "-a", "-q", "--filter", "label="+d.label())
	if err == nil && out != "" {
		return fmt.Errorf("chaos: containers left after cleanup: %s", out)
	}
	return d.unmountData()
}

// Logs returns the last lines of every node's log, for a failed test.
func (d *Docker) Logs(ctx context.Context, lines int) string {
	var b strings.Builder
	for _, n := range d.nodes {
		cmd := exec.CommandContext(ctx, "docker", "logs", "--tail", strconv.Itoa(lines), n.name)
		out, _ := cmd.CombinedOutput()
		fmt.Fprintf(&b, "==== %s (last %d lines)\n%s\n", n.name, lines, out)
	}
	return b.String()
}

// run runs one fault command and logs it.
func (d *Docker) run(ctx context.Context, args ...string) error {
	start := time.Now()
	_, err := docker(ctx, args...)
	d.opts.Logf("docker %s (%s)", strings.Join(args, " "), time.Since(start).Round(time.Millisecond))
	return err
}

func (d *Docker) node(id string) (*dockerNode, error) {
	for _, n := range d.nodes {
		if n.name == id {
			return n, nil
		}
	}
	return nil, fmt.Errorf("chaos: no node %s", id)
}

// Name implements Driver.
func (d *Docker) Name() string { return "docker" }

// Nodes implements Driver.
func (d *Docker) Nodes() []string { return d.names(false) }

// Replicas implements Driver.
func (d *Docker) Replicas() []string { return d.names(true) }

// names returns the voters' names, or the read replicas'.
func (d *Docker) names(replicas bool) []string {
	var out []string
	for _, n := range d.nodes {
		if n.replica == replicas {
			out = append(out, n.name)
		}
	}
	return out
}

// Endpoint implements Driver.
func (d *Docker) Endpoint(id string) string {
	n, err := d.node(id)
	if err != nil {
		return ""
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(n.port))
}

// Hold implements Driver.
func (d *Docker) Hold() time.Duration { return d.opts.Hold }

// ClientTLS implements Driver: the CA and the client certificate root
// (nil with Insecure).
func (d *Docker) ClientTLS() *tls.Config {
	if d.tls == nil {
		return nil
	}
	return d.tls.Clone()
}

// Kill implements Driver: docker kill (SIGKILL).
func (d *Docker) Kill(ctx context.Context, id string) error { return d.run(ctx, "kill", id) }

// Stop implements Driver: docker stop (SIGTERM, then SIGKILL after its
// default 10s grace).
func (d *Docker) Stop(ctx context.Context, id string) error { return d.run(ctx, "stop", id) }

// Start implements Driver: docker start.
func (d *Docker) Start(ctx context.Context, id string) error { return d.run(ctx, "start", id) }

// Restart implements Driver: docker restart (stop with grace, start).
func (d *Docker) Restart(ctx context.Context, id string) error { return d.run(ctx, "restart", id) }

// Pause implements Driver: docker pause freezes every process of the
// container.
func (d *Docker) Pause(ctx context.Context, id string) error { return d.run(ctx, "pause", id) }

// Resume implements Driver: docker unpause.
func (d *Docker) Resume(ctx context.Context, id string) error { return d.run(ctx, "unpause", id) }

// Partition implements Driver: docker network disconnect from the cluster
// network.
func (d *Docker) Partition(ctx context.Context, id string) error {
	return d.run(ctx, "network", "disconnect", d.opts.Prefix, id)
}

// Heal implements Driver: docker network connect, at the node's address
// and with its alias (its gossip address is that IP).
func (d *Docker) Heal(ctx context.Context, id string) error {
	n, err := d.node(id)
	if err != nil {
		return err
	}
	return d.run(ctx, "network", "connect", "--ip", n.ip, "--alias", n.name, d.opts.Prefix, id)
}

var _ Driver = (*Docker)(nil)
