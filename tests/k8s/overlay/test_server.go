/*
Copyright 2021 The Kubernetes Authors.

Licensed under the Apache License, Version 2.0 (the "License");
you may not use this file except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
*/

// Tessera: this file stands in for k8s.io/apiserver/pkg/storage/etcd3/testserver/test_server.go
// (v0.37.2) through `go test -overlay` (scripts/kube-storage-tests.sh). Upstream's RunEtcd
// starts an embedded etcd for every test; this one connects to the etcd endpoint in
// $ETCD_ENDPOINT (comma-separated host:port or URLs) instead, so Kubernetes' own storage
// tests (the etcd3 store's and the watch cache's, unchanged) run against any etcd API:
// real etcd, or Tessera's router. "A fresh server for each test" becomes "a keyspace of
// its own for each test": every client RunEtcd returns sees its keys under a prefix of
// its own (as clientv3/namespace, RangeStream included), which keeps a key's slashes, so
// "/pods/ns/x" and "/pods/other/y" stay in different placement units of a router; and
// one test at a time (see exclusive). What tests still share is the revision counter
// across tests (no test starts at revision 1) and compaction. The endpoint must hold no
// keys when the tests start.
// Everything else (NewTestConfig, the recorders) is as upstream.

package testserver

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/kubernetes"
	"go.etcd.io/etcd/client/v3/namespace"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	storagetesting "k8s.io/apiserver/pkg/storage/testing"
)

// getAvailablePort returns a TCP port that is available for binding.
func getAvailablePorts(count int) ([]int, error) {
	ports := []int{}
	for i := 0; i < count; i++ {
		l, err := net.Listen("tcp", ":0")
		if err != nil {
			return nil, fmt.Errorf("could not bind to a port: %v", err)
		}
		// It is possible but unlikely that someone else will bind this port before we get a chance to use it.
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// NewTestConfig is upstream's: tests still build a config to tune the server
// (e.g. WatchProgressNotifyInterval); with an external endpoint the server must be
// started with those settings instead (scripts/kube-storage-tests.sh says which).
func NewTestConfig(t testing.TB) *embed.Config {
	cfg := embed.NewConfig()

	cfg.UnsafeNoFsync = true

	ports, err := getAvailablePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	clientURL := url.URL{Scheme: "http", Host: net.JoinHostPort("localhost", strconv.Itoa(ports[0]))}
	peerURL := url.URL{Scheme: "http", Host: net.JoinHostPort("localhost", strconv.Itoa(ports[1]))}

	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)

	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zaptest.NewLogger(t, zaptest.Level(zapcore.ErrorLevel)).Named("etcd-server"))
	cfg.Dir = t.TempDir()
	os.Chmod(cfg.Dir, 0700)
	return cfg
}

var (
	firstUse sync.Once
	firstErr error
	clients  atomic.Int64
)

// wipe deletes every key under prefix.
func wipe(kv clientv3.KV, prefix string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := kv.Delete(ctx, prefix, clientv3.WithPrefix())
	return err
}

// prefixKV is clientv3/namespace's KV with RangeStream (GetStream) too.
type prefixKV struct {
	clientv3.KV // namespace.NewKV(raw, pfx)
	raw         clientv3.KV
	pfx         string
}

func (kv *prefixKV) GetStream(ctx context.Context, key string, opts ...clientv3.OpOption) (clientv3.GetStreamChan, error) {
	op := clientv3.OpGet(key, opts...)
	end := op.RangeBytes()
	opts = append([]clientv3.OpOption{}, opts...)
	switch {
	case len(end) == 1 && end[0] == 0: // from key: to the end of the prefix
		opts = append(opts, clientv3.WithRange(clientv3.GetPrefixRangeEnd(kv.pfx)))
	case len(end) > 0:
		opts = append(opts, clientv3.WithRange(kv.pfx+string(end)))
	}
	in, err := kv.raw.GetStream(ctx, kv.pfx+key, opts...)
	if err != nil {
		return nil, err
	}
	out := make(chan clientv3.RangeStreamResponse, 1)
	go func() {
		defer close(out)
		for r := range in {
			if r.Err() == nil && r.RangeResponse != nil {
				for _, e := range r.RangeResponse.Kvs {
					e.Key = e.Key[len(kv.pfx):]
				}
			}
			out <- r
		}
	}()
	return out, nil
}

// One test at a time has the endpoint: tests that set up in parallel (the watch cache's
// TestLists) would otherwise share its revision counter, which their expectations (a
// list's resourceVersion is their own last write's) don't allow. A test's subtests may
// share their parent's turn; a turn not given within a minute is taken anyway (logged).
var turn = struct {
	sync.Mutex
	cond   *sync.Cond
	holder string
	count  int
}{}

func exclusive(t testing.TB) {
	name := t.Name()
	turn.Lock()
	defer turn.Unlock()
	if turn.cond == nil {
		turn.cond = sync.NewCond(&turn.Mutex)
	}
	deadline := time.Now().Add(time.Minute)
	timer := time.AfterFunc(time.Minute, func() { turn.Lock(); turn.cond.Broadcast(); turn.Unlock() })
	defer timer.Stop()
	for turn.count > 0 && name != turn.holder && !strings.HasPrefix(name, turn.holder+"/") {
		if time.Now().After(deadline) {
			t.Logf("%s still has the endpoint after a minute: running beside it", turn.holder)
			break
		}
		turn.cond.Wait()
	}
	if turn.count == 0 {
		turn.holder = name
	}
	turn.count++
	t.Cleanup(func() {
		turn.Lock()
		defer turn.Unlock()
		if turn.count--; turn.count == 0 {
			turn.holder = ""
			turn.cond.Broadcast()
		}
	})
}

// RunEtcd returns a client connected to $ETCD_ENDPOINT, in a keyspace of its own.
// cfg (a server configuration upstream would start) is only reported: the endpoint
// runs as it was started.
func RunEtcd(t testing.TB, cfg *embed.Config) *kubernetes.Client {
	t.Helper()
	endpoint := os.Getenv("ETCD_ENDPOINT")
	if endpoint == "" {
		t.Fatal("ETCD_ENDPOINT is not set: these tests run against an external etcd endpoint (scripts/kube-storage-tests.sh ENDPOINT)")
	}
	if cfg != nil && cfg.WatchProgressNotifyInterval != embed.NewConfig().WatchProgressNotifyInterval {
		t.Logf("this test wants the server's watch progress notify interval at %v: start %s with it", cfg.WatchProgressNotifyInterval, endpoint)
	}

	client, err := kubernetes.New(clientv3.Config{
		Endpoints:   strings.Split(endpoint, ","),
		DialTimeout: 10 * time.Second,
		Logger:      zaptest.NewLogger(t, zaptest.Level(zapcore.ErrorLevel)).Named("etcd-client"),
	})
	if err != nil {
		t.Fatal(err)
	}
	raw := client.KV
	// The endpoint must start empty: tests compact it, and assume a server of their own.
	firstUse.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		resp, err := raw.Get(ctx, "\x00", clientv3.WithFromKey(), clientv3.WithCountOnly())
		switch {
		case err != nil:
			firstErr = fmt.Errorf("cannot read %s: %w", endpoint, err)
		case resp.Count > 0 && os.Getenv("ETCD_WIPE") != "1":
			firstErr = fmt.Errorf("%s holds %d keys: these tests want an etcd of their own (ETCD_WIPE=1 deletes every key first)", endpoint, resp.Count)
		case resp.Count > 0:
			_, firstErr = raw.Delete(ctx, "\x00", clientv3.WithFromKey())
		}
	})
	if firstErr != nil {
		client.Close()
		t.Fatal(firstErr)
	}
	exclusive(t)
	// No slash: the prefix keeps the test's key layout (and so its placement units).
	pfx := fmt.Sprintf("k8s-%d-%d", os.Getpid(), clients.Add(1))
	if err := wipe(raw, pfx); err != nil {
		client.Close()
		t.Fatalf("emptying %s's keyspace %q: %v", endpoint, pfx, err)
	}
	t.Cleanup(func() {
		if err := wipe(raw, pfx); err != nil {
			t.Errorf("emptying %s's keyspace %q after the test: %v", endpoint, pfx, err)
		}
		client.Close()
	})
	client.KV = &prefixKV{KV: namespace.NewKV(raw, pfx), raw: raw, pfx: pfx}
	client.Watcher = namespace.NewWatcher(client.Watcher, pfx)
	client.Lease = namespace.NewLease(client.Lease, pfx)

	kubernetesRecorder := storagetesting.NewKubernetesRecorder(client.Kubernetes)
	client.KV = storagetesting.NewKVRecorder(client.KV, kubernetesRecorder)
	client.Kubernetes = kubernetesRecorder
	return client
}
