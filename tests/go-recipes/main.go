// Command go-recipes runs clientv3's concurrency recipes through one etcd
// endpoint and prints one JSON object (router/tests/cross_txn.rs runs it
// against etcd 3.4 and through the router, keys spread over groups):
//   - Mutex: contenders each take the lock a few times; no two hold it at once;
//   - Election: campaign, leader, resign;
//   - STM at each isolation level: transfers between accounts keep the total.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: go-recipes ENDPOINT")
		os.Exit(2)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{os.Args[1]}, DialTimeout: 5 * time.Second})
	check(err)
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	out := map[string]any{}
	out["mutexDone"], out["mutexMaxInside"] = mutex(ctx, cli)
	out["leader"] = election(ctx, cli)
	for name, iso := range map[string]concurrency.Isolation{
		"stmSerializableSnapshot": concurrency.SerializableSnapshot,
		"stmSerializable":         concurrency.Serializable,
		"stmRepeatableReads":      concurrency.RepeatableReads,
	} {
		out[name] = transfers(ctx, cli, iso)
	}
	b, err := json.Marshal(out)
	check(err)
	fmt.Println(string(b))
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAILED:", err)
		os.Exit(1)
	}
}

func mutex(ctx context.Context, cli *clientv3.Client) (int64, int64) {
	var inside, maxInside, done int64
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := concurrency.NewSession(cli, concurrency.WithTTL(10))
			check(err)
			defer s.Close()
			m := concurrency.NewMutex(s, "go/lock/a")
			for r := 0; r < 3; r++ {
				check(m.Lock(ctx))
				n := atomic.AddInt64(&inside, 1)
				for {
					old := atomic.LoadInt64(&maxInside)
					if n <= old || atomic.CompareAndSwapInt64(&maxInside, old, n) {
						break
					}
				}
				time.Sleep(5 * time.Millisecond)
				atomic.AddInt64(&inside, -1)
				atomic.AddInt64(&done, 1)
				check(m.Unlock(ctx))
			}
		}()
	}
	wg.Wait()
	return done, maxInside
}

func election(ctx context.Context, cli *clientv3.Client) string {
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(10))
	check(err)
	defer s.Close()
	e := concurrency.NewElection(s, "go/election")
	check(e.Campaign(ctx, "candidate-1"))
	l, err := e.Leader(ctx)
	check(err)
	check(e.Resign(ctx))
	return string(l.Kvs[0].Value)
}

// Accounts in different placement units (3 path levels), so on several groups.
func account(i int) string { return fmt.Sprintf("go/acct/%d/balance", i) }

func transfers(ctx context.Context, cli *clientv3.Client, iso concurrency.Isolation) int {
	const accounts = 6
	for i := 0; i < accounts; i++ {
		_, err := cli.Put(ctx, account(i), "100")
		check(err)
	}
	var wg sync.WaitGroup
	for w := 0; w < 3; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for r := 0; r < 5; r++ {
				from, to := (w+r)%accounts, (w+2*r+1)%accounts
				if from == to {
					continue
				}
				_, err := concurrency.NewSTM(cli, func(s concurrency.STM) error {
					a, _ := strconv.Atoi(s.Get(account(from)))
					b, _ := strconv.Atoi(s.Get(account(to)))
					s.Put(account(from), strconv.Itoa(a-1))
					s.Put(account(to), strconv.Itoa(b+1))
					return nil
				}, concurrency.WithIsolation(iso), concurrency.WithAbortContext(ctx))
				check(err)
			}
		}(w)
	}
	wg.Wait()
	total := 0
	for i := 0; i < accounts; i++ {
		r, err := cli.Get(ctx, account(i))
		check(err)
		v, _ := strconv.Atoi(string(r.Kvs[0].Value))
		total += v
	}
	return total
}
