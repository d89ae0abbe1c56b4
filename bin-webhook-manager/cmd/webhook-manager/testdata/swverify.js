// Verifies deliveries with the Standard Webhooks reference library for JavaScript
// ("standardwebhooks" on npm), as a receiver using it would. Reads
// {"secret": "whsec_…", "deliveries": [{"body": "…", "headers": {…}}]} on stdin; exits non-zero
// if any delivery fails, or if a tampered body passes.
const { Webhook } = require("standardwebhooks");

let input = "";
process.stdin.on("data", (c) => (input += c));
process.stdin.on("end", () => {
  const { secret, deliveries } = JSON.parse(input);
  const wh = new Webhook(secret);
  for (const d of deliveries) {
    wh.verify(d.body, d.headers); // throws on a bad signature or a stale timestamp
    let tamperedPassed = true;
    try {
      wh.verify(d.body + " ", d.headers);
    } catch (e) {
      tamperedPassed = false;
    }
    if (tamperedPassed) {
      console.error("a tampered body verified");
      process.exit(1);
    }
  }
  console.log(`verified ${deliveries.length}`);
});
