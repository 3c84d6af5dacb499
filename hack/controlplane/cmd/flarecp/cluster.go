package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	_ "embed"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/component-base/version"
)

//go:embed kwok-stages.yaml
var kwokStages []byte

// upStart is when `cluster up` began, for the start-up timings in the log.
var upStart time.Time

func versionString() string {
	v := version.Get()
	return fmt.Sprintf("flarecp %s (kubernetes %s.%s, %s)", v.GitVersion, v.Major, v.Minor, v.GoVersion)
}

func runCluster(args []string) int {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return 2
	}
	switch args[0] {
	case "up":
		return clusterUp(args[1:])
	case "down":
		return clusterDown(args[1:])
	}
	fmt.Fprintf(os.Stderr, "cluster: unknown subcommand %q\n", args[0])
	return 2
}

func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "%s flarecp: %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, a...))
}

// freePorts asks the kernel for n distinct free ports on 127.0.0.1 (all listeners are held
// until every port is chosen, then released). A component that then loses the race for its
// port fails at once, and `cluster up` retries with fresh ports.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

type child struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

type launcher struct {
	dir    string
	self   string
	mu     sync.Mutex
	kids   []*child
	exited chan *child
}

// start runs `flarecp <component> args...` as a child process, output to DIR/logs/<name>.log.
// Children die with the launcher (Pdeathsig), and live in their own process group so that a
// Ctrl-C in a terminal reaches only the launcher, which then stops them in order.
func (l *launcher) start(name string, args ...string) (*child, error) {
	return l.startPath(name, l.self, &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true},
		append([]string{name}, args...)...)
}

// startPath runs path args... as a child with the given process attributes (namespaces for the
// real node), output to DIR/logs/<name>.log.
func (l *launcher) startPath(name, path string, attr *syscall.SysProcAttr, args ...string) (*child, error) {
	logPath := filepath.Join(l.dir, "logs", name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(f, "\n=== %s %s %s\n", time.Now().Format(time.RFC3339), filepath.Base(path), strings.Join(args, " "))
	cmd := exec.Command(path, args...)
	cmd.Stdout = f
	cmd.Stderr = f
	cmd.Dir = l.dir
	cmd.Env = os.Environ()
	cmd.SysProcAttr = attr
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, err
	}
	c := &child{name: name, cmd: cmd, done: make(chan struct{})}
	l.mu.Lock()
	l.kids = append(l.kids, c)
	l.mu.Unlock()
	go func() {
		c.err = cmd.Wait()
		f.Close()
		close(c.done)
		l.exited <- c
	}()
	logf("started %s (pid %d), log %s", name, cmd.Process.Pid, logPath)
	return c, nil
}

// stop sends SIGTERM, waits up to grace, then SIGKILLs the child's whole process group.
func (c *child) stop(grace time.Duration) {
	select {
	case <-c.done:
		return
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(grace):
		logf("%s did not stop in %s, killing", c.name, grace)
		if syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL) != nil {
			_ = c.cmd.Process.Kill()
		}
		<-c.done
	}
}

func (l *launcher) tracked(c *child) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, k := range l.kids {
		if k == c {
			return true
		}
	}
	return false
}

func (l *launcher) forget(c *child) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, k := range l.kids {
		if k == c {
			l.kids = append(l.kids[:i], l.kids[i+1:]...)
			return
		}
	}
}

// stopAll stops children in reverse start order: kwok, scheduler, controller-manager
// together, then the apiserver, then etcd.
func (l *launcher) stopAll() {
	l.mu.Lock()
	kids := append([]*child(nil), l.kids...)
	l.mu.Unlock()
	var wg sync.WaitGroup
	for i := len(kids) - 1; i >= 0; i-- {
		c := kids[i]
		if c.name == "kube-apiserver" || c.name == "etcd" {
			continue
		}
		wg.Add(1)
		go func() { defer wg.Done(); c.stop(10 * time.Second) }()
	}
	wg.Wait()
	for i := len(kids) - 1; i >= 0; i-- {
		if c := kids[i]; c.name == "kube-apiserver" || c.name == "etcd" {
			c.stop(15 * time.Second)
		}
	}
}

// waitFor polls check until it returns true, the child dies, or the deadline passes.
func waitFor(ctx context.Context, what string, deadline time.Duration, watch []*child, check func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	var last error
	for {
		ok, err := check()
		if ok {
			return nil
		}
		if err != nil {
			last = err
		}
		for _, c := range watch {
			select {
			case <-c.done:
				return fmt.Errorf("%s exited while waiting for %s: %v (see logs/%s.log)", c.name, what, c.err, c.name)
			default:
			}
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("timed out waiting for %s: %v", what, last)
			}
			return fmt.Errorf("timed out waiting for %s", what)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func httpGetOK(client *http.Client, url string) (bool, error) {
	resp, err := client.Get(url)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("%s: %d %s", url, resp.StatusCode, strings.TrimSpace(string(body)))
	}
	return true, nil
}

func pidAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

func readPid(dir string) int {
	b, err := os.ReadFile(filepath.Join(dir, "flarecp.pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

type upOptions struct {
	dir, name           string
	nodes, gpus         int
	nodeCPU, nodeMemory string
	nodePods            string
	timeout             time.Duration
	etcdFsync           bool
	exitWithParent      bool
	realNodes           int
	realNodeGPUs        int
	imports             stringList
	apiserverPort       int
	runc, cniBinDir     string
}

func clusterUp(args []string) int {
	// Children are started from this goroutine, pinned to one OS thread for the launcher's
	// whole life: Pdeathsig fires when the *thread* that forked a child exits.
	runtime.LockOSThread()
	fs := flag.NewFlagSet("cluster up", flag.ContinueOnError)
	o := upOptions{}
	fs.StringVar(&o.dir, "dir", "", "cluster directory: pki/, logs/, etcd data, kubeconfig (required)")
	fs.StringVar(&o.name, "name", "", "cluster name for the kubeconfig (default: the directory's name)")
	fs.IntVar(&o.nodes, "nodes", 2, "kwok nodes to create")
	fs.IntVar(&o.gpus, "gpus", 8, "nvidia.com/gpu capacity per node")
	fs.StringVar(&o.nodeCPU, "node-cpu", "32", "cpu capacity per node")
	fs.StringVar(&o.nodeMemory, "node-memory", "256Gi", "memory capacity per node")
	fs.StringVar(&o.nodePods, "node-pods", "110", "pods capacity per node")
	fs.DurationVar(&o.timeout, "timeout", 3*time.Minute, "how long to wait for the control plane to be ready")
	fs.BoolVar(&o.etcdFsync, "etcd-fsync", false, "let etcd fsync (default: UnsafeNoFsync, fast and not crash-safe)")
	fs.IntVar(&o.realNodes, "real-nodes", 0, "real nodes (kubelet, containerd, kube-proxy, CoreDNS; needs root): 0 or 1")
	fs.IntVar(&o.realNodeGPUs, "real-node-gpus", 2, "nvidia.com/gpu capacity advertised on the real node (no device behind it)")
	fs.Var(&o.imports, "import", "image archive (OCI or docker) to import into the real node's containerd before the cluster is ready (repeatable; the pause image is required)")
	fs.StringVar(&o.runc, "runc", "/usr/sbin/runc", "runc binary for the real node's containerd (Debian's runc)")
	fs.StringVar(&o.cniBinDir, "cni-bin-dir", "/usr/lib/cni", "CNI plugins directory for the real node (Debian's containernetworking-plugins)")
	fs.IntVar(&o.apiserverPort, "apiserver-port", 0, "kube-apiserver port (default: a free port)")
	fs.BoolVar(&o.exitWithParent, "exit-with-parent", false, "stop the cluster (SIGTERM to itself) when the process that started it dies")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if o.exitWithParent {
		// Set on this (locked) thread: the launcher gets SIGTERM when its parent dies.
		ppid := os.Getppid()
		if _, _, e := syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_SET_PDEATHSIG, uintptr(syscall.SIGTERM), 0); e != 0 {
			logf("prctl(PR_SET_PDEATHSIG): %v", e)
			return 1
		}
		if os.Getppid() != ppid || ppid == 1 {
			logf("parent already gone")
			return 1
		}
	}
	if o.dir == "" {
		fmt.Fprintln(os.Stderr, "cluster up: --dir is required")
		return 2
	}
	dir, err := filepath.Abs(o.dir)
	if err != nil {
		logf("%v", err)
		return 1
	}
	o.dir = dir
	if o.name == "" {
		o.name = strings.TrimPrefix(filepath.Base(dir), ".")
	}
	for _, d := range []string{"logs", "pki"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			logf("%v", err)
			return 1
		}
	}
	if pid := readPid(dir); pid != 0 && pid != os.Getpid() && pidAlive(pid) {
		logf("a cluster is already running in %s (pid %d); run `flarecp cluster down --dir %s`", dir, pid, dir)
		return 1
	}
	self, err := os.Executable()
	if err != nil {
		logf("%v", err)
		return 1
	}
	// Prerequisites first: a missing one fails here, with what to install, before anything runs.
	if o.apiserverPort != 0 {
		l, err := net.Listen("tcp", fmt.Sprintf(":%d", o.apiserverPort))
		if err != nil {
			logf("--apiserver-port %d is in use (%v): free it (`ss -ltnp 'sport = :%d'` shows by whom) or choose another port",
				o.apiserverPort, err, o.apiserverPort)
			return 1
		}
		l.Close()
	}
	var node *nodeNet
	if o.realNodes > 0 {
		if err := checkNodePrerequisites(self, o); err != nil {
			logf("%v", err)
			return 1
		}
		if node, err = allocateNodeNet(); err != nil {
			logf("%v", err)
			return 1
		}
		defer node.release()
	}
	os.Remove(filepath.Join(dir, "kubeconfig"))
	os.Remove(filepath.Join(dir, "cluster.json"))
	if err := writeFileAtomic(filepath.Join(dir, "flarecp.pid"), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		logf("%v", err)
		return 1
	}
	defer os.Remove(filepath.Join(dir, "flarecp.pid"))

	l := &launcher{dir: dir, self: self, exited: make(chan *child, 16)}

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var signalled atomic.Bool
	watcherDone := make(chan struct{})
	go func() {
		defer close(watcherDone)
		select {
		case s := <-sigs:
			logf("%v during start-up, stopping", s)
			signalled.Store(true)
			cancel()
		case <-ctx.Done():
		}
	}()

	upStart = time.Now()
	st, cs, err := l.bringUp(ctx, o, node)
	cancel()
	<-watcherDone // a signal is now either recorded in signalled or still queued in sigs
	if err != nil || signalled.Load() {
		if !signalled.Load() {
			logf("start-up failed: %v", err)
		}
		os.Remove(filepath.Join(dir, "kubeconfig"))
		os.Remove(filepath.Join(dir, "cluster.json"))
		l.stopAll()
		if signalled.Load() {
			return 0
		}
		return 1
	}
	logf("cluster %q ready in %.1fs (nodes Ready): %s", o.name, time.Since(upStart).Seconds(), st.Server)
	fmt.Println(st.Kubeconfig)
	svcCtx, stopServices := context.WithCancel(context.Background())
	servicesDone := make(chan struct{})
	go func() {
		defer close(servicesDone)
		if node != nil {
			nodeServices(svcCtx, cs, o)
		}
	}()

	// Serve until signalled or a component dies.
	code := 0
wait:
	for {
		select {
		case s := <-sigs:
			logf("%v, stopping", s)
			break wait
		case c := <-l.exited:
			if !l.tracked(c) {
				continue // from a start-up attempt that was retried on other ports
			}
			logf("%s exited unexpectedly (%v); stopping the cluster (see logs/%s.log)", c.name, c.err, c.name)
			code = 1
			break wait
		}
	}
	stopServices()
	<-servicesDone
	os.Remove(filepath.Join(dir, "kubeconfig"))
	os.Remove(filepath.Join(dir, "cluster.json"))
	l.stopAll()
	logf("stopped")
	return code
}

func (l *launcher) bringUp(ctx context.Context, o upOptions, node *nodeNet) (*clusterState, kubernetes.Interface, error) {
	dir := o.dir
	pkiDir := filepath.Join(dir, "pki")
	var extraIPs []net.IP
	if node != nil {
		extraIPs = append(extraIPs, net.ParseIP(node.hostIP))
	}
	p, err := ensurePKI(pkiDir, extraIPs)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: %w", err)
	}
	caPool := x509.NewCertPool()
	caPool.AddCert(p.ca.cert)
	adminTLS, err := tls.X509KeyPair(certPEM(p.admin.cert), keyPEM(p.admin.key))
	if err != nil {
		return nil, nil, err
	}
	httpc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: caPool, Certificates: []tls.Certificate{adminTLS}},
	}}
	plain := &http.Client{Timeout: 5 * time.Second}

	// etcd and apiserver: fresh data and ports; retry if a port was taken in between.
	var etcdC, apiC *child
	var ports []int
	var server string
	for attempt := 1; ; attempt++ {
		if ports, err = freePorts(7); err != nil {
			return nil, nil, err
		}
		etcdClient, etcdPeer, apiPort := ports[0], ports[1], ports[2]
		if o.apiserverPort != 0 {
			apiPort, ports[2] = o.apiserverPort, o.apiserverPort
		}
		dataDir := filepath.Join(dir, "etcd")
		if err := os.RemoveAll(dataDir); err != nil {
			return nil, nil, err
		}
		etcdC, err = l.start("etcd", "--data-dir="+dataDir, "--name="+o.name,
			"--client-port="+strconv.Itoa(etcdClient), "--peer-port="+strconv.Itoa(etcdPeer),
			"--unsafe-no-fsync="+strconv.FormatBool(!o.etcdFsync))
		if err != nil {
			return nil, nil, err
		}
		err = waitFor(ctx, "etcd /health", 60*time.Second, []*child{etcdC}, func() (bool, error) {
			return httpGetOK(plain, fmt.Sprintf("http://127.0.0.1:%d/health", etcdClient))
		})
		if err != nil {
			l.forget(etcdC)
			etcdC.stop(5 * time.Second)
			if attempt < 3 && ctx.Err() == nil {
				logf("etcd: %v; retrying with other ports", err)
				continue
			}
			return nil, nil, err
		}
		server = fmt.Sprintf("https://127.0.0.1:%d", apiPort)
		bind, advertise := "127.0.0.1", "127.0.0.1"
		var nodeArgs []string
		if node != nil {
			// The real node (its own network namespace) and its pods reach the apiserver at the
			// host end of the node's veth; the apiserver reaches kubelets (logs, exec) at their IP.
			bind, advertise = "0.0.0.0", node.hostIP
			nodeArgs = []string{
				"--kubelet-client-certificate=" + filepath.Join(pkiDir, "apiserver-kubelet-client.crt"),
				"--kubelet-client-key=" + filepath.Join(pkiDir, "apiserver-kubelet-client.key"),
				"--kubelet-preferred-address-types=InternalIP",
				// Admission webhooks behind a Service (the Helm chart's): the apiserver runs on the
				// host, where kube-proxy has no rules (they live in the node's network namespace), so
				// it dials the Service's endpoints (Pod IPs, routed to the node) instead of its ClusterIP.
				"--enable-aggregator-routing=true",
			}
		}
		apiC, err = l.start("kube-apiserver", append([]string{
			"--etcd-servers=" + fmt.Sprintf("http://127.0.0.1:%d", etcdClient),
			"--bind-address=" + bind,
			"--advertise-address=" + advertise,
			"--secure-port=" + strconv.Itoa(apiPort),
			"--cert-dir=" + filepath.Join(pkiDir, "apiserver-generated"),
			"--tls-cert-file=" + filepath.Join(pkiDir, "apiserver.crt"),
			"--tls-private-key-file=" + filepath.Join(pkiDir, "apiserver.key"),
			"--client-ca-file=" + filepath.Join(pkiDir, "ca.crt"),
			"--authorization-mode=Node,RBAC",
			"--enable-admission-plugins=NodeRestriction",
			"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
			"--service-account-key-file=" + filepath.Join(pkiDir, "sa.pub"),
			"--service-account-signing-key-file=" + filepath.Join(pkiDir, "sa.key"),
			"--service-cluster-ip-range=10.96.0.0/16",
			"--allow-privileged=true",
			"--enable-priority-and-fairness=false",
			"--max-requests-inflight=0",
			"--max-mutating-requests-inflight=0",
			"--profiling=false",
			"--event-ttl=1h",
		}, nodeArgs...)...)
		if err != nil {
			return nil, nil, err
		}
		err = waitFor(ctx, "kube-apiserver /readyz", 120*time.Second, []*child{apiC, etcdC}, func() (bool, error) {
			return httpGetOK(httpc, server+"/readyz")
		})
		if err != nil {
			l.forget(apiC)
			apiC.stop(5 * time.Second)
			l.forget(etcdC)
			etcdC.stop(5 * time.Second)
			if attempt < 3 && ctx.Err() == nil {
				logf("kube-apiserver: %v; retrying with other ports", err)
				continue
			}
			return nil, nil, err
		}
		break
	}
	logf("kube-apiserver /readyz ok in %.1fs at %s", time.Since(upStart).Seconds(), server)

	// Kubeconfigs for the other components (each with its own identity, bound by the
	// apiserver's bootstrap RBAC) and the admin.
	write := func(name string, kp *keyPair) (string, error) {
		b, err := kubeconfigBytes(o.name, server, p.ca, kp)
		if err != nil {
			return "", err
		}
		path := filepath.Join(pkiDir, name+".kubeconfig")
		return path, writeFileAtomic(path, b, 0o600)
	}
	adminKC, err := write("admin", p.admin)
	if err != nil {
		return nil, nil, err
	}
	kcmKC, err := write("controller-manager", p.kcm)
	if err != nil {
		return nil, nil, err
	}
	schedKC, err := write("scheduler", p.sched)
	if err != nil {
		return nil, nil, err
	}
	stagesPath := filepath.Join(dir, "kwok-stages.yaml")
	if err := writeFileAtomic(stagesPath, kwokStages, 0o644); err != nil {
		return nil, nil, err
	}

	kcmPort, schedPort, kwokPort := ports[3], ports[4], ports[5]
	kcmC, err := l.start("kube-controller-manager",
		"--kubeconfig="+kcmKC,
		"--authentication-kubeconfig="+kcmKC,
		"--authorization-kubeconfig="+kcmKC,
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(kcmPort),
		"--cert-dir="+filepath.Join(pkiDir, "controller-manager-generated"),
		"--service-account-private-key-file="+filepath.Join(pkiDir, "sa.key"),
		"--root-ca-file="+filepath.Join(pkiDir, "ca.crt"),
		"--cluster-signing-cert-file="+filepath.Join(pkiDir, "ca.crt"),
		"--cluster-signing-key-file="+filepath.Join(pkiDir, "ca.key"),
		"--use-service-account-credentials=true",
		"--cluster-name="+o.name,
		"--kube-api-qps=100",
		"--kube-api-burst=200",
		"--profiling=false",
		// kwok renews the nodes' leases; on a busy machine it can miss the default 50 s, and every
		// pod of the node would be marked NotReady. Simulated nodes do not fail: be patient.
		"--node-monitor-grace-period=3m",
	)
	if err != nil {
		return nil, nil, err
	}
	schedC, err := l.start("kube-scheduler",
		"--kubeconfig="+schedKC,
		"--authentication-kubeconfig="+schedKC,
		"--authorization-kubeconfig="+schedKC,
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(schedPort),
		"--cert-dir="+filepath.Join(pkiDir, "scheduler-generated"),
		"--profiling=false",
	)
	if err != nil {
		return nil, nil, err
	}
	kwokC, err := l.start("kwok",
		"--kubeconfig="+adminKC,
		// Only the fake nodes: a real node (--real-nodes) is its kubelet's.
		"--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
		"--config="+stagesPath,
		"--server-address=127.0.0.1:"+strconv.Itoa(kwokPort),
		"--node-port="+strconv.Itoa(ports[6]),
	)
	if err != nil {
		return nil, nil, err
	}
	all := []*child{etcdC, apiC, kcmC, schedC, kwokC}

	rc, err := clientcmd.BuildConfigFromFlags("", adminKC)
	if err != nil {
		return nil, nil, err
	}
	rc.QPS, rc.Burst = 50, 100
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, nil, err
	}
	if node != nil {
		if err := nodeRBAC(ctx, cs); err != nil {
			return nil, nil, fmt.Errorf("real node: %w", err)
		}
		nodeC, err := l.startNode(o, node, server, p)
		if err != nil {
			return nil, nil, fmt.Errorf("real node: %w", err)
		}
		all = append(all, nodeC)
	}
	if err := setupObjects(ctx, cs, o); err != nil {
		return nil, nil, err
	}
	err = waitFor(ctx, "nodes Ready", o.timeout, all, func() (bool, error) {
		nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{LabelSelector: "type=kwok"})
		if err != nil {
			return false, err
		}
		ready := 0
		for _, n := range nodes.Items {
			for _, c := range n.Status.Conditions {
				if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
					ready++
				}
			}
		}
		return ready >= o.nodes, fmt.Errorf("%d/%d nodes Ready", ready, o.nodes)
	})
	if err != nil {
		return nil, nil, err
	}
	if node != nil {
		err = waitFor(ctx, "the real node Ready", o.timeout, all, func() (bool, error) {
			n, err := cs.CoreV1().Nodes().Get(ctx, realNodeName, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			for _, c := range n.Status.Conditions {
				if c.Type == corev1.NodeReady {
					return c.Status == corev1.ConditionTrue, fmt.Errorf("%s: %s", c.Reason, c.Message)
				}
			}
			return false, errors.New("no Ready condition yet")
		})
		if err != nil {
			return nil, nil, fmt.Errorf("%w (see logs/node.log, logs/kubelet.log, logs/containerd.log)", err)
		}
		if err := advertiseGPUs(ctx, cs, o.realNodeGPUs); err != nil && o.realNodeGPUs > 0 {
			return nil, nil, err
		}
		logf("real node %s Ready in %.1fs (%s, pods %s)", realNodeName, time.Since(upStart).Seconds(), node.nodeIP, node.podCIDR)
	}
	// Pods are refused until the token controller created the namespace's ServiceAccount.
	err = waitFor(ctx, "default ServiceAccount", o.timeout, all, func() (bool, error) {
		_, err := cs.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err == nil, err
	})
	if err != nil {
		return nil, nil, err
	}

	kcPath := filepath.Join(dir, "kubeconfig")
	st := &clusterState{
		Name: o.name, Server: server, Pid: os.Getpid(), Kubeconfig: kcPath,
		Version: version.Get().GitVersion,
		Ports: map[string]int{"etcd-client": ports[0], "etcd-peer": ports[1], "kube-apiserver": ports[2],
			"kube-controller-manager": kcmPort, "kube-scheduler": schedPort, "kwok": kwokPort},
	}
	sb, _ := json.MarshalIndent(st, "", "  ")
	if err := writeFileAtomic(filepath.Join(dir, "cluster.json"), append(sb, '\n'), 0o644); err != nil {
		return nil, nil, err
	}
	adminBytes, err := os.ReadFile(adminKC)
	if err != nil {
		return nil, nil, err
	}
	// Last: its appearance is the readiness signal for scripts and the test fixtures.
	if err := writeFileAtomic(kcPath, adminBytes, 0o600); err != nil {
		return nil, nil, err
	}
	return st, cs, nil
}

// setupObjects creates the default StorageClass served by kwok's volume stages and the kwok
// Nodes (GPU capacity, no NoSchedule taint).
func setupObjects(ctx context.Context, cs kubernetes.Interface, o upOptions) error {
	bindImmediate := storagev1.VolumeBindingImmediate
	reclaim := corev1.PersistentVolumeReclaimDelete
	sc := &storagev1.StorageClass{
		ObjectMeta: metav1.ObjectMeta{Name: "kwok-volume", Annotations: map[string]string{
			"storageclass.kubernetes.io/is-default-class": strconv.FormatBool(o.realNodes == 0)}},
		Provisioner:       "kwok.x-k8s.io/volume",
		ReclaimPolicy:     &reclaim,
		VolumeBindingMode: &bindImmediate,
	}
	if _, err := cs.StorageV1().StorageClasses().Create(ctx, sc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("storageclass: %w", err)
	}
	if o.realNodes > 0 {
		// Real pods need real directories: the default class of a cluster with a real node.
		if _, err := cs.StorageV1().StorageClasses().Create(ctx, localStorageClass(), metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("storageclass %s: %w", localStorage, err)
		}
	}
	res := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse(o.nodeCPU),
		corev1.ResourceMemory: resource.MustParse(o.nodeMemory),
		corev1.ResourcePods:   resource.MustParse(o.nodePods),
		"nvidia.com/gpu":      *resource.NewQuantity(int64(o.gpus), resource.DecimalSI),
		"ephemeral-storage":   resource.MustParse("1Ti"),
	}
	for i := 0; i < o.nodes; i++ {
		name := fmt.Sprintf("kwok-node-%d", i)
		node := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{
				Name: name,
				Annotations: map[string]string{
					"node.alpha.kubernetes.io/ttl": "0",
					"kwok.x-k8s.io/node":           "fake",
				},
				Labels: map[string]string{
					"type":                          "kwok",
					"kubernetes.io/arch":            "amd64",
					"kubernetes.io/hostname":        name,
					"kubernetes.io/os":              "linux",
					"kubernetes.io/role":            "agent",
					"node-role.kubernetes.io/agent": "",
					"nvidia.com/gpu.present":        "true",
					"nvidia.com/gpu.product":        "NVIDIA-H100-80GB-HBM3",
					"topology.kubernetes.io/zone":   "zone-" + strconv.Itoa(i),
				},
			},
			Status: corev1.NodeStatus{Capacity: res, Allocatable: res},
		}
		created, err := cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("node %s: %w", name, err)
		}
		if _, ok := created.Status.Capacity["nvidia.com/gpu"]; !ok {
			created.Status.Capacity, created.Status.Allocatable = res, res
			if _, err := cs.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
				return fmt.Errorf("node %s status: %w", name, err)
			}
		}
	}
	return nil
}

// clusterDown signals the launcher recorded in DIR/flarecp.pid and waits for it to exit.
func clusterDown(args []string) int {
	fs := flag.NewFlagSet("cluster down", flag.ContinueOnError)
	dir := fs.String("dir", "", "cluster directory")
	timeout := fs.Duration("timeout", 60*time.Second, "how long to wait before SIGKILL")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "cluster down: --dir is required")
		return 2
	}
	pid := readPid(*dir)
	if pid == 0 || !pidAlive(pid) {
		logf("no cluster running in %s", *dir)
		os.Remove(filepath.Join(*dir, "flarecp.pid"))
		return 0
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(*timeout)
	for pidAlive(pid) && !isZombie(pid) {
		if time.Now().After(deadline) {
			logf("launcher %d did not stop in %s, killing it (its children die with it)", pid, *timeout)
			_ = syscall.Kill(pid, syscall.SIGKILL)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	logf("cluster in %s stopped", *dir)
	return 0
}

// isZombie reports whether pid has exited but not been reaped by its parent.
func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] == 'Z'
	}
	return false
}
