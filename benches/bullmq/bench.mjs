// BullMQ peer of benches/redis_peers.py: a worker and a producer, both started and driven by
// the Python runner (benches/redis_bullmq.py), which owns the key prefix and cleans up.
//
//   node bench.mjs worker   --url URL --prefix P --queue Q --handler count|roundtrip
//                           --counter KEY --signals JSON --concurrency C
//   node bench.mjs producer --url URL --prefix P --queue Q --chunk 1000
//
// worker: one BullMQ Worker (concurrency C) whose no-op job either INCRs KEY (roundtrip: the
// job's number in the run) or counts in this process (count); the job whose number is a key of
// SIGNALS ({"number": [list key, label]}) RPUSHes "label <process.hrtime ns>" onto that list.
//
// producer: prints "ready" once connected, then answers one line per command read on stdin:
//   enqueue N  -> Queue.addBulk of N no-op jobs in chunks of --chunk, then "ok"
//   push M     -> M single Queue.add calls one after another, each timed with
//                 process.hrtime.bigint(): a JSON array of the M durations in nanoseconds
//   quit (or end of input) -> close and exit 0
// Every job is added with removeOnComplete: true (no result or finished job kept).

import { Queue, Worker } from "bullmq";
import { Redis } from "ioredis";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";

const { positionals, values: args } = parseArgs({
  allowPositionals: true,
  options: {
    url: { type: "string" },
    prefix: { type: "string" },
    queue: { type: "string", default: "q" },
    handler: { type: "string", default: "roundtrip" },
    counter: { type: "string" },
    signals: { type: "string", default: "{}" },
    concurrency: { type: "string", default: "1" },
    chunk: { type: "string", default: "1000" },
  },
});

const JOB_NAME = "noop";
const JOB_OPTIONS = { removeOnComplete: true };
const CLOSE_GRACE_MS = 5000; // then exit anyway (the runner SIGKILLs later still)

function need(name) {
  const value = args[name];
  if (value === undefined || value === "") {
    console.error(`bench.mjs: --${name} is required`);
    process.exit(2);
  }
  return value;
}

function connect() {
  // maxRetriesPerRequest: null is what BullMQ requires of a Worker's connection.
  return new Redis(need("url"), { maxRetriesPerRequest: null });
}

async function closeAll(closers) {
  const timer = setTimeout(() => process.exit(1), CLOSE_GRACE_MS);
  timer.unref();
  for (const close of closers) {
    try {
      await close();
    } catch (err) {
      console.error(`bench.mjs: while closing: ${err}`);
    }
  }
  clearTimeout(timer);
}

async function runWorker() {
  const prefix = need("prefix");
  const handler = need("handler");
  const counter = need("counter");
  if (handler !== "roundtrip" && handler !== "count") {
    console.error(`bench.mjs: --handler must be roundtrip or count, not ${handler}`);
    process.exit(2);
  }
  const signals = new Map(
    Object.entries(JSON.parse(args.signals)).map(([n, target]) => [Number(n), target]),
  );
  const concurrency = Number.parseInt(args.concurrency, 10);
  const connection = connect();
  const client = connect(); // the handler's own client, like the Python peers' task module

  let jobs = 0;
  const signal = (n) => {
    const [key, label] = signals.get(n);
    return client.rpush(key, `${label} ${process.hrtime.bigint()}`);
  };
  const processor =
    handler === "roundtrip"
      ? async () => {
          const n = await client.incr(counter);
          if (signals.has(n)) await signal(n);
        }
      : async () => {
          jobs += 1; // one thread: no lock
          if (signals.has(jobs)) await signal(jobs);
        };

  const worker = new Worker(args.queue, processor, { connection, prefix, concurrency });
  worker.on("error", (err) => console.error(`bench.mjs worker: ${err}`));
  worker.on("failed", (job, err) => console.error(`bench.mjs job ${job?.id} failed: ${err}`));
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    await closeAll([() => worker.close(), () => connection.quit(), () => client.quit()]);
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  await worker.waitUntilReady();
}

async function runProducer() {
  const prefix = need("prefix");
  const chunk = Number.parseInt(args.chunk, 10);
  const connection = connect();
  const queue = new Queue(args.queue, { connection, prefix, defaultJobOptions: JOB_OPTIONS });
  await queue.waitUntilReady();

  const commands = {
    async enqueue(count) {
      for (let done = 0; done < count; done += chunk) {
        const jobs = Array.from({ length: Math.min(chunk, count - done) }, () => ({
          name: JOB_NAME,
          data: {},
        }));
        await queue.addBulk(jobs);
      }
      return "ok";
    },
    async push(count) {
      const samples = new Array(count);
      for (let i = 0; i < count; i++) {
        const t0 = process.hrtime.bigint();
        await queue.add(JOB_NAME, {});
        samples[i] = Number(process.hrtime.bigint() - t0);
      }
      return JSON.stringify(samples);
    },
  };

  const quit = () => closeAll([() => queue.close(), () => connection.quit()]);
  process.stdout.write("ready\n");
  for await (const line of createInterface({ input: process.stdin })) {
    const [command, count] = line.trim().split(/\s+/);
    if (command === "quit") break;
    const run = commands[command];
    if (run === undefined || !(Number(count) >= 0)) {
      process.stdout.write(`error: bad command ${JSON.stringify(line)}\n`);
      continue;
    }
    try {
      process.stdout.write(`${await run(Number(count))}\n`);
    } catch (err) {
      process.stdout.write(`error: ${String(err).replaceAll("\n", " ")}\n`);
    }
  }
  await quit();
  process.exit(0);
}

const mode = positionals[0];
if (mode === "worker") {
  await runWorker();
} else if (mode === "producer") {
  await runProducer();
} else {
  console.error("usage: node bench.mjs worker|producer --url URL --prefix P ...");
  process.exit(2);
}
