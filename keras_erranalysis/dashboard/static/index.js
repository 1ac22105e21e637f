// Placeholder frontend of the Error Analysis tab (the full UI comes from the `ui` branch and
// replaces this file). It lists the runs; every string is inserted with textContent.
export async function render() {
  const heading = document.createElement("h1");
  heading.textContent = "Error Analysis";
  document.body.appendChild(heading);
  const list = document.createElement("ul");
  list.id = "runs";
  document.body.appendChild(list);
  try {
    const response = await fetch("./runs");
    const body = await response.json();
    for (const run of body.runs || []) {
      const item = document.createElement("li");
      item.textContent = `${run.run}: ${run.n_examples} examples, epochs ${run.epochs.join(", ")}`;
      list.appendChild(item);
    }
  } catch (error) {
    const note = document.createElement("p");
    note.textContent = `Cannot list the runs: ${error}`;
    document.body.appendChild(note);
  }
}
