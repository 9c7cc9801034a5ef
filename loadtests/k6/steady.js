// A steady producer at RATE messages/s for DURATION (open model: arrivals do
// not wait for answers), for outage-and-recovery runs.
//   k6 run -e TARGET=... -e RATE=100 -e DURATION=30s steady.js
import http from 'k6/http';
import { check } from 'k6';

const body = JSON.stringify({ event: 'invoice.created', pad: 'x'.repeat(500) });
export const options = {
  scenarios: {
    steady: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.RATE || 100),
      timeUnit: '1s',
      duration: __ENV.DURATION || '30s',
      preAllocatedVUs: 20,
      maxVUs: 100,
    },
  },
};
export default function () {
  const r = http.post(__ENV.TARGET, body, { headers: { 'Content-Type': 'application/json' } });
  check(r, { accepted: (res) => res.status === 202 });
}
