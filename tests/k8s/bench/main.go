// Command kube-bench puts a Kubernetes-like load on a kube-apiserver through client-go
// and prints one markdown table row per kind of operation (ops, ops/s, p50, p99, errors).
//
// The load, for a fixed duration, on ConfigMaps in several namespaces of their own:
//   - W writers, each creating, updating and deleting its own ConfigMaps in one namespace
//     (writer i in namespace i mod N), closed loop: each keeps about -objects of them live;
//   - informers (the first over all namespaces, the others one namespace each) measuring
//     event latency: the time written into an annotation just before a create/update is
//     sent, to the informer's handler seeing that event;
//   - paginated lists (limit=500 over all namespaces, following continue tokens) and
//     consistent lists (resourceVersion="", no limit: kube-apiserver 1.37 serves them from
//     its watch cache once the cache has caught up with the store's current revision).
//
// After the duration the writers stop and the informers get a grace period to see every
// event; an event an informer never saw counts as an error of its row.
//
// usage: kube-bench --kubeconfig FILE [--duration 60s] [--writers 8] [--namespaces 8] ...
//
//	kube-bench --header   (prints the table's header only)
package main

import (
	"context"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

const sentAt = "bench.tessera.local/sent-at" // annotation: unix nanoseconds when the write was sent

// recorder collects one operation kind's latencies and errors.
type recorder struct {
	mu     sync.Mutex
	lat    []time.Duration
	errs   int64
	sample map[string]int // error text (shortened) -> count
}

func newRecorder() *recorder { return &recorder{sample: map[string]int{}} }

func (r *recorder) ok(d time.Duration) {
	r.mu.Lock()
	r.lat = append(r.lat, d)
	r.mu.Unlock()
}

func (r *recorder) fail(err error) {
	r.mu.Lock()
	r.errs++
	msg := err.Error()
	if len(msg) > 160 {
		msg = msg[:160]
	}
	r.sample[msg]++
	r.mu.Unlock()
}

func (r *recorder) failN(n int64, why string) {
	r.mu.Lock()
	r.errs += n
	r.sample[why] += int(n)
	r.mu.Unlock()
}

func pct(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p+0.5) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	return float64(sorted[i].Microseconds()) / 1000
}

// timed runs f, recording its latency or error.
func (r *recorder) timed(f func() error) error {
	t := time.Now()
	err := f()
	if err != nil {
		r.fail(err)
	} else {
		r.ok(time.Since(t))
	}
	return err
}

// created: what the writers made, for the informers' missed-event count.
type created struct {
	mu    sync.Mutex
	names map[string]string // name -> namespace, creates acknowledged during the run
}

// informer: one informer's view (all namespaces when ns == "").
type informer struct {
	ns   string
	mu   sync.Mutex
	seen map[string]bool // names whose create event this informer saw
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the kube-apiserver to load")
	label := flag.String("label", "", "first column of every row (the system measured); empty: no such column")
	header := flag.Bool("header", false, "print the table header and exit")
	duration := flag.Duration("duration", 60*time.Second, "how long the load runs")
	writers := flag.Int("writers", 8, "writer goroutines (create/update/delete)")
	namespaces := flag.Int("namespaces", 8, "namespaces the writers spread over")
	objects := flag.Int("objects", 200, "ConfigMaps each writer keeps live (about)")
	valueSize := flag.Int("value-size", 1024, "bytes of data in each ConfigMap")
	nInformers := flag.Int("informers", 3, "informers (the first over all namespaces, the others one namespace each)")
	pagers := flag.Int("paginated-listers", 1, "goroutines listing every ConfigMap with limit=500")
	consistent := flag.Int("consistent-listers", 1, "goroutines listing every ConfigMap with resourceVersion=\"\" (no limit)")
	listPause := flag.Duration("list-pause", 100*time.Millisecond, "pause between two lists of one lister")
	grace := flag.Duration("grace", 15*time.Second, "after the load, how long informers may take to see every event")
	prefix := flag.String("namespace-prefix", "bench", "namespaces are PREFIX-0 ... PREFIX-(N-1)")
	flag.Parse()

	if *header {
		if *label != "" {
			fmt.Println("| system | operation | ops | ops/s | p50 (ms) | p99 (ms) | errors |")
			fmt.Println("|--------|-----------|----:|------:|---------:|---------:|-------:|")
		} else {
			fmt.Println("| operation | ops | ops/s | p50 (ms) | p99 (ms) | errors |")
			fmt.Println("|-----------|----:|------:|---------:|---------:|-------:|")
		}
		return
	}
	if *kubeconfig == "" {
		fmt.Fprintln(os.Stderr, "kube-bench: --kubeconfig is required")
		os.Exit(2)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fatal("kubeconfig: %v", err)
	}
	// As Kubernetes' own components talk to kube-apiserver: protobuf, no client-side
	// rate limit (QPS < 0 disables it), many requests in flight.
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	cfg.QPS = -1
	cfg.Timeout = 60 * time.Second
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		fatal("client: %v", err)
	}
	ctx := context.Background()

	nsNames := make([]string, *namespaces)
	for i := range nsNames {
		nsNames[i] = fmt.Sprintf("%s-%d", *prefix, i)
		_, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: nsNames[i]}}, metav1.CreateOptions{})
		if err != nil && !strings.Contains(err.Error(), "already exists") {
			fatal("namespace %s: %v", nsNames[i], err)
		}
	}

	rec := map[string]*recorder{}
	kinds := []string{"create", "update", "delete", "watch event (create)", "watch event (update)",
		"list page (limit=500)", "list paginated, all pages", "list consistent (rv=\"\")"}
	for _, k := range kinds {
		rec[k] = newRecorder()
	}
	start := time.Now()
	startNanos := start.UnixNano()

	// --- Informers: their own client and factory each, so each has its own watch.
	made := &created{names: map[string]string{}}
	infs := make([]*informer, *nInformers)
	stop := make(chan struct{})
	for i := range infs {
		inf := &informer{seen: map[string]bool{}}
		if i > 0 {
			inf.ns = nsNames[(i-1)%len(nsNames)]
		}
		infs[i] = inf
		ic, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			fatal("client: %v", err)
		}
		opts := []informers.SharedInformerOption{}
		if inf.ns != "" {
			opts = append(opts, informers.WithNamespace(inf.ns))
		}
		f := informers.NewSharedInformerFactoryWithOptions(ic, 0, opts...)
		si := f.Core().V1().ConfigMaps().Informer()
		observe := func(obj interface{}, kind string) {
			cm, ok := obj.(*corev1.ConfigMap)
			if !ok || !strings.HasPrefix(cm.Namespace, *prefix+"-") {
				return
			}
			n, err := strconv.ParseInt(cm.Annotations[sentAt], 10, 64)
			if err != nil || n < startNanos {
				return // not written during this run
			}
			rec[kind].ok(time.Duration(time.Now().UnixNano() - n))
			if kind == "watch event (create)" {
				inf.mu.Lock()
				inf.seen[cm.Name] = true
				inf.mu.Unlock()
			}
		}
		_, err = si.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj interface{}) { observe(obj, "watch event (create)") },
			UpdateFunc: func(_, obj interface{}) { observe(obj, "watch event (update)") },
		})
		if err != nil {
			fatal("informer: %v", err)
		}
		f.Start(stop)
		if !cache.WaitForCacheSync(stop, si.HasSynced) {
			fatal("informer %d did not sync", i)
		}
	}
	fmt.Fprintf(os.Stderr, "kube-bench: %d namespaces, %d informers synced; load for %s\n", len(nsNames), len(infs), *duration)

	start = time.Now()
	end := start.Add(*duration)
	var wg sync.WaitGroup
	payload := strings.Repeat("x", *valueSize)

	// --- Writers.
	var seq atomic.Int64
	for w := 0; w < *writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			ns := nsNames[w%len(nsNames)]
			cms := client.CoreV1().ConfigMaps(ns)
			rnd := rand.New(rand.NewSource(int64(w) + 1))
			var live []*corev1.ConfigMap
			for time.Now().Before(end) {
				r := rnd.Intn(100)
				switch {
				case len(live) == 0 || (len(live) < *objects && r < 40):
					name := fmt.Sprintf("w%d-%d", w, seq.Add(1))
					cm := &corev1.ConfigMap{
						ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"writer": strconv.Itoa(w)}},
						Data:       map[string]string{"v": payload},
					}
					var out *corev1.ConfigMap
					err := rec["create"].timed(func() (err error) {
						cm.Annotations = map[string]string{sentAt: strconv.FormatInt(time.Now().UnixNano(), 10)}
						out, err = cms.Create(ctx, cm, metav1.CreateOptions{})
						return err
					})
					if err == nil {
						live = append(live, out)
						made.mu.Lock()
						made.names[name] = ns
						made.mu.Unlock()
					}
				case r < 80 || len(live) < *objects/2:
					i := rnd.Intn(len(live))
					cm := live[i].DeepCopy()
					cm.Data["n"] = strconv.Itoa(rnd.Int())
					var out *corev1.ConfigMap
					err := rec["update"].timed(func() (err error) {
						cm.Annotations[sentAt] = strconv.FormatInt(time.Now().UnixNano(), 10)
						out, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
						return err
					})
					if err == nil {
						live[i] = out
					} else if got, gerr := cms.Get(ctx, cm.Name, metav1.GetOptions{}); gerr == nil {
						live[i] = got // e.g. a conflict after a retried write: carry on from the stored one
					}
				default:
					i := rnd.Intn(len(live))
					name := live[i].Name
					if rec["delete"].timed(func() error { return cms.Delete(ctx, name, metav1.DeleteOptions{}) }) == nil {
						live[i] = live[len(live)-1]
						live = live[:len(live)-1]
					}
				}
			}
		}(w)
	}

	// --- Listers.
	for i := 0; i < *pagers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
				t0 := time.Now()
				cont, pages, failed := "", 0, false
				for {
					var l *corev1.ConfigMapList
					err := rec["list page (limit=500)"].timed(func() (err error) {
						l, err = client.CoreV1().ConfigMaps("").List(ctx, metav1.ListOptions{Limit: 500, Continue: cont})
						return err
					})
					if err != nil {
						failed = true
						break
					}
					pages++
					if cont = l.Continue; cont == "" {
						break
					}
				}
				if failed {
					rec["list paginated, all pages"].failN(1, "a page failed")
				} else {
					rec["list paginated, all pages"].ok(time.Since(t0))
				}
				time.Sleep(*listPause)
			}
		}()
	}
	for i := 0; i < *consistent; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
				rec["list consistent (rv=\"\")"].timed(func() error {
					_, err := client.CoreV1().ConfigMaps("").List(ctx, metav1.ListOptions{ResourceVersion: ""})
					return err
				})
				time.Sleep(*listPause)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)

	// --- Grace: every informer should see every create in its namespaces.
	missing := func() (int64, []string) {
		made.mu.Lock()
		defer made.mu.Unlock()
		var n int64
		var per []string
		for i, inf := range infs {
			inf.mu.Lock()
			var m int64
			for name, ns := range made.names {
				if (inf.ns == "" || inf.ns == ns) && !inf.seen[name] {
					m++
				}
			}
			inf.mu.Unlock()
			n += m
			per = append(per, fmt.Sprintf("informer %d (%s): %d", i, nsOrAll(inf.ns), m))
		}
		return n, per
	}
	deadline := time.Now().Add(*grace)
	n, per := missing()
	for n > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		n, per = missing()
	}
	if n > 0 {
		rec["watch event (create)"].failN(n, "create events never seen: "+strings.Join(per, ", "))
	}
	close(stop)

	// --- Rows.
	for _, k := range kinds {
		r := rec[k]
		r.mu.Lock() // an informer may still be handling a late event
		lat, errs := append([]time.Duration(nil), r.lat...), r.errs
		r.mu.Unlock()
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		ops := len(lat)
		row := fmt.Sprintf("| %s | %d | %.0f | %.2f | %.2f | %d |", k, ops, float64(ops)/elapsed.Seconds(), pct(lat, 0.50), pct(lat, 0.99), errs)
		if *label != "" {
			row = "| " + *label + " " + row
		}
		fmt.Println(row)
		r.mu.Lock()
		for msg, c := range r.sample {
			fmt.Fprintf(os.Stderr, "kube-bench: %s: %d× %s\n", k, c, msg)
		}
		r.mu.Unlock()
	}
	fmt.Fprintf(os.Stderr, "kube-bench: ran %.1fs; %d ConfigMaps created\n", elapsed.Seconds(), len(made.names))
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		fmt.Fprintf(os.Stderr, "kube-bench: cpu %.1f s\n", cpu.Seconds())
	}
}

func nsOrAll(ns string) string {
	if ns == "" {
		return "all namespaces"
	}
	return ns
}

func fatal(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "kube-bench: "+format+"\n", args...)
	os.Exit(1)
}
