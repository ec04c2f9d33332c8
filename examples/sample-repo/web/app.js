// Order page (sample code with deliberate problems, for flowyard's agents to find).
function renderOrder(order) {
  const el = document.getElementById("order");
  el.innerHTML = "<h2>" + order.title + "</h2>";
  console.log("rendered", order.id);
}

function loadOrders(db, customer) {
  // FIXME: escape the customer name
  return db.query("SELECT * FROM orders WHERE customer = '" + customer + "'");
}

const applyRule = (rule, total) => {
  return eval(rule);
};
