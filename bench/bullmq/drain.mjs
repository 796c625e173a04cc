// BullMQ's drain of no-op jobs, the baseline scripts/bench queue compares Tasklane with:
// node drain.mjs <redis-url> <jobs> <concurrency> prints "<jobs/s>".
import { Queue, Worker } from 'bullmq';

const [url, jobsArg, concurrencyArg] = process.argv.slice(2);
const jobs = Number(jobsArg);
const concurrency = Number(concurrencyArg);
const { hostname, port } = new URL(url);
const connection = { host: hostname, port: Number(port), maxRetriesPerRequest: null };
const name = `bench-${process.pid}-${Date.now()}`;

const queue = new Queue(name, { connection });
const payload = { enqueued_us: 0 };
for (let i = 0; i < jobs; i += 500) {
  const batch = [];
  for (let j = i; j < Math.min(i + 500, jobs); j++) batch.push({ name: 'noop', data: payload });
  await queue.addBulk(batch);
}

let done = 0;
const started = process.hrtime.bigint();
const finished = new Promise((resolve) => {
  const worker = new Worker(name, async () => {}, { connection, concurrency });
  worker.on('completed', () => {
    done += 1;
    if (done === jobs) resolve(worker);
  });
});
const worker = await finished;
const seconds = Number(process.hrtime.bigint() - started) / 1e9;
console.log((jobs / seconds).toFixed(0));
await worker.close();
await queue.obliterate({ force: true });
await queue.close();
