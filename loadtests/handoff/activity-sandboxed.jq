# The README's fourth example written with what the compiled subset does
# not take (a variable, `.[]`): the same output, from the sandbox's
# workers. loadtests/handoff.sh sandbox measures it.
.account as $account
| {
    subject:    "Meeting with \($account)",
    body:       .summary,
    open_items: [.action_items[] | select(.done | not) | "\(.who): \(.text)"]
  }
