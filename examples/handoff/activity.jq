# A meeting summary becomes a CRM activity: its open action items only,
# each as "who: what".
{
  subject:    "Meeting with \(.account)",
  body:       .summary,
  open_items: (.action_items | map(select(.done | not)) | map("\(.who): \(.text)"))
}
