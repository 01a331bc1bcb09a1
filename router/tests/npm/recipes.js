// npm etcd3's recipes through one endpoint (router/tests/cross_txn.rs runs
// this against the router, keys spread over groups): Lock with several
// contenders (mutual exclusion checked with a shared counter), Election
// (campaign, leader, resign) and STM transfers between accounts (the total
// kept). Prints one JSON object; exits non-zero on any error.
//
// STM runs at Serializable and RepeatableReads. Not SerializableSnapshot:
// etcd3 1.1.2 then requires every written key's mod_revision to be below
// the smallest mod_revision it read (not the read revision), so a transfer
// between two accounts last written at different revisions conflicts on
// every retry — against etcd 3.4 as well.
const { Etcd3 } = require('etcd3');
// etcd3's Isolation is a TypeScript const enum (not exported at run time).
const Isolation = { SerializableSnapshot: 0, Serializable: 1, RepeatableReads: 2 };

const client = new Etcd3({ hosts: process.argv[2] });
const sleep = (ms) => new Promise((res) => setTimeout(res, ms));

async function locks() {
  let inside = 0, maxInside = 0, done = 0;
  const worker = async () => {
    for (let r = 0; r < 3; r++) {
      for (;;) {
        try {
          await client.lock('npm/lock/a').do(async () => {
            inside++;
            maxInside = Math.max(maxInside, inside);
            await sleep(5);
            inside--;
            done++;
          });
          break;
        } catch (e) {
          // Held by another contender: npm etcd3's Lock does not wait, it fails.
          if (e.constructor.name !== 'EtcdLockFailedError') throw e;
          await sleep(3);
        }
      }
    }
  };
  await Promise.all([0, 1, 2, 3].map(worker));
  return { done, maxInside };
}

async function election() {
  const e = client.election('npm/election');
  const campaign = e.campaign('candidate-1');
  await new Promise((res, rej) => {
    campaign.on('elected', res);
    campaign.on('error', rej);
  });
  const leader = await e.leader();
  await campaign.resign();
  return leader;
}

// Accounts in different placement units (3 path levels), so on several groups.
const account = (i) => `npm/acct/${i}/balance`;

async function transfers(isolation) {
  const accounts = 6;
  for (let i = 0; i < accounts; i++) await client.put(account(i)).value(100);
  const mover = async (w) => {
    for (let r = 0; r < 5; r++) {
      const from = (w + r) % accounts, to = (w + 2 * r + 1) % accounts;
      if (from === to) continue;
      await client.stm({ retries: 50, isolation }).transact(async (tx) => {
        const [a, b] = await Promise.all([tx.get(account(from)).number(), tx.get(account(to)).number()]);
        await Promise.all([tx.put(account(from)).value(a - 1), tx.put(account(to)).value(b + 1)]);
      });
    }
  };
  await Promise.all([0, 1, 2].map(mover));
  let total = 0;
  for (let i = 0; i < accounts; i++) total += await client.get(account(i)).number();
  return total;
}

async function main() {
  const t0 = Date.now();
  const { done, maxInside } = await locks();
  const t1 = Date.now();
  const leader = await election();
  const t2 = Date.now();
  const stmSerializable = await transfers(Isolation.Serializable);
  const stmRepeatableReads = await transfers(Isolation.RepeatableReads);
  console.error(`lock ${t1 - t0} ms, election ${t2 - t1} ms, stm ${Date.now() - t2} ms`);
  console.log(JSON.stringify({ done, maxInside, leader, stmSerializable, stmRepeatableReads }));
  client.close();
}

main().catch((e) => {
  console.error('FAILED', e);
  process.exit(1);
});
