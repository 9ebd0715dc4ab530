// Records every event the worker sends the page, so the test can read token ids and reasons.
export const HOOK = `
  window.__apr = { events: [] };
  const Base = window.Worker;
  window.Worker = class extends Base {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (e) => {
        try { window.__apr.events.push(JSON.parse(e.data.json)); } catch (_) {}
      });
    }
  };
`;
